"""Plain data across the sandbox boundary: `encode(value)` for arguments, `decode(data)` for what
the candidate returned.

The encoding is described in datagen.steps.sandbox.harness (which encodes return values inside the
sandbox). `decode` is the trust boundary: it accepts only that grammar and builds exact builtin
objects (int, float, complex, str, bytes, bool, None, list, tuple, set, frozenset, dict), so a
comparison the parent makes with a decoded value runs builtin code only, whatever the candidate
sent. Raises `ValueError` (with a short reason) for anything else: an unknown tag, an object
with two keys, a non-string hex, unhashable set items or dict keys, nesting past `MAX_DEPTH`,
a set or dict of more than `MAX_HASHED_ITEMS` entries.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 100
# Sets and dicts of ints can be built to collide in one hash bucket (hash(n) = n mod 2**61 - 1),
# which makes building them quadratic: a candidate could stall datagen with one return value.
MAX_HASHED_ITEMS = 10_000
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def encode(value: Any, depth: int = 0) -> Any:
    """The JSON-able form of a plain-data value; `TypeError` for anything else."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if -(2**53) < value < 2**53 else {"int": hex(value)}
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind in (list, tuple, set, frozenset):
        return {kind.__name__: [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [encode(value.real, depth + 1), encode(value.imag, depth + 1)]}
    raise TypeError(f"{kind.__qualname__} is not plain data")


def decode(data: Any, depth: int = 0) -> Any:
    """Exact builtin objects from the JSON the sandbox wrote (already parsed by json.loads)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    kind = type(data)
    if data is None or kind in (bool, str, float):
        return data
    if kind is int:
        return data
    if kind is not dict or len(data) != 1:
        raise ValueError(f"not a value of the sandbox's encoding: a JSON {kind.__name__}")
    ((tag, body),) = data.items()
    try:
        if tag in ("set", "frozenset", "dict") and type(body) is list and len(body) > MAX_HASHED_ITEMS:
            raise ValueError(f"a {tag} of more than {MAX_HASHED_ITEMS} items")
        if tag in _SEQUENCES and type(body) is list:
            return _SEQUENCES[tag](decode(item, depth + 1) for item in body)
        if tag == "dict" and type(body) is list:
            pairs = [pair for pair in body if type(pair) is list and len(pair) == 2]
            if len(pairs) != len(body):
                raise ValueError("a dict entry is not a [key, value] pair")
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in pairs}
        if tag == "int" and type(body) is str and len(body) <= 100_000:
            return int(body, 16)
        if tag == "float" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "bytes" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "complex" and type(body) is list and len(body) == 2:
            real, imag = (decode(part, depth + 1) for part in body)
            if type(real) not in (int, float) or type(imag) not in (int, float):
                raise ValueError("a complex part is not a number")
            return complex(real, imag)
    except TypeError as err:  # unhashable set item or dict key
        raise ValueError(str(err)) from None
    raise ValueError(f"not a value of the sandbox's encoding: tag {str(tag)[:40]!r}")
