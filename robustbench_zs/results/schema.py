"""The evaluation record: one JSON document per (method, model, dataset, subset, threat, profile, seed)."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from .stats import pack_bools, unpack_bools, wilson_interval

SCHEMA_VERSION = 1

#: Top-level fields every record carries (checked when reading).
REQUIRED = (
    "schema_version",
    "record_key",
    "created_utc",
    "software",
    "method",
    "model",
    "dataset",
    "attack",
    "profile",
    "seed",
    "run",
    "result",
)


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


def per_example(record: dict) -> np.ndarray:
    res = record["result"]
    return unpack_bools(res["per_example"]["data"], res["n"])


def validate(record: object) -> dict:
    """Raise ValueError naming what is wrong, else return the record."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"missing fields: {', '.join(missing)}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {record['schema_version']} (this version reads {SCHEMA_VERSION})")
    nested = {
        "dataset": ("id", "name", "split", "n", "n_total", "indices_sha256"),
        "model": ("arch", "label"),
        "attack": ("name",),
        "profile": ("normalization", "logit_scale", "resize", "prompts"),
        "software": ("robustbench_zs",),
    }
    for block, keys in nested.items():
        if not isinstance(record[block], dict) or not set(keys) <= set(record[block]):
            raise ValueError(f"'{block}' lacks one of {', '.join(keys)}")
    if not isinstance(record["method"], str):
        raise ValueError("'method' is not a string")
    res = record["result"]
    if not isinstance(res, dict) or not {"n", "correct", "accuracy", "ci95"} <= set(res):
        raise ValueError("result block lacks n/correct/accuracy/ci95")
    if res["n"] <= 0 or not 0 <= res["correct"] <= res["n"] or abs(res["accuracy"] - res["correct"] / res["n"]) > 1e-12:
        raise ValueError("result: accuracy does not equal correct / n")
    return record
