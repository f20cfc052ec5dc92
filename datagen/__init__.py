"""datagen: manufacture post-training data."""

__version__ = "0.1.0"
