"""The computed parts of an evaluation record: its key (the hash of what determines the number) and its result block.

The record itself, its fields and their checks are :mod:`.record`'s (re-exported here for the readers of before).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .record import FIELDS, REQUIRED, SCHEMA_VERSION, Record, validate
from .stats import pack_bools, unpack_bools, wilson_interval

__all__ = ["FIELDS", "REQUIRED", "SCHEMA_VERSION", "per_example", "record_key", "result_block", "validate"]


def record_key(identity: dict) -> str:
    """Hash of everything that determines the number (not of when, where or how fast it was computed)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def result_block(correct: np.ndarray, clean_correct: np.ndarray | None = None) -> dict:
    correct = np.asarray(correct, dtype=bool)
    k, n = int(correct.sum()), int(correct.size)
    lo, hi = wilson_interval(k, n)
    out = {
        "n": n,
        "correct": k,
        "accuracy": k / n if n else float("nan"),
        "ci95": [lo, hi],
        "ci_method": "wilson",
        "per_example": {
            "encoding": "packbits-little-base64",
            "order": "subset indices, ascending",
            "data": pack_bools(correct),
        },
    }
    if clean_correct is not None:
        out["clean_correct"] = int(np.asarray(clean_correct, dtype=bool).sum())
    return out


def per_example(record: Record | dict) -> np.ndarray:
    """The per-image correctness of a record (:meth:`Record.per_example`), or of its JSON document as read."""
    if isinstance(record, Record):
        return record.per_example()
    res = record["result"]
    return unpack_bools(res["per_example"]["data"], res["n"])
