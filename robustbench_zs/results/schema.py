"""The evaluation record: one JSON document per (method, model, dataset, subset, threat, profile, seed)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math

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


#: JSON types a field may hold: ``str``, ``int``, ``num`` (finite int or float), ``bool``, ``dict``, ``list``, ``null``.
_KINDS = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "bool": lambda v: isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}
_NAMES = {"str": "a string", "int": "an integer", "num": "a finite number", "bool": "a boolean"}
_NAMES |= {"dict": "an object", "list": "a list", "null": "null"}

#: (field path, allowed kinds, required): every field the leaderboard, compare and reproduce read from a record
FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("schema_version", "int", True),
    ("record_key", "str", True),
    ("created_utc", "str", True),
    ("software", "dict", True),
    ("software.robustbench_zs", "str", True),
    ("method", "str", True),
    ("method_label", "str", False),
    ("threat_label", "str", False),
    ("model", "dict", True),
    ("model.arch", "str", True),
    ("model.label", "str", True),
    ("model.pretrained", "str", False),
    ("model.checkpoint_sha256", "str|null", False),
    ("model.weights_sha256", "str|null", False),
    ("model.checkpoint_name", "str|null", False),
    ("model.training", "dict|null", False),
    ("model.method_config", "dict|null", False),
    ("dataset", "dict", True),
    ("dataset.id", "str", True),
    ("dataset.name", "str", True),
    ("dataset.split", "str", True),
    ("dataset.n", "int", True),
    ("dataset.n_total", "int", True),
    ("dataset.indices_sha256", "str", True),
    ("dataset.content_sha256", "str", False),
    ("attack", "dict", True),
    ("attack.name", "str", True),
    ("attack.norm", "str", False),
    ("attack.eps", "num", False),
    ("attack.eps_255", "num", False),
    ("attack.steps", "int", False),
    ("attack.step_size_255", "num|null", False),
    ("attack.precision", "str", False),
    ("attack.implementation", "str|null", False),
    ("attack.components", "list", False),
    ("attack.commit", "str|null", False),
    ("profile", "dict", True),
    ("profile.name", "str", False),
    ("profile.normalization", "str", True),
    ("profile.logit_scale", "str|num", True),
    ("profile.resize", "str", True),
    ("profile.prompts", "str", True),
    ("profile.preprocess", "dict|str|null", False),
    ("profile.attack_precision", "str|null", False),
    ("profile.paper_subsample", "bool", False),
    ("seed", "int|null", True),
    ("run", "dict", True),
    ("run.wall_time_s", "num|null", False),
    ("result", "dict", True),
    ("result.n", "int", True),
    ("result.correct", "int", True),
    ("result.accuracy", "num", True),
    ("result.ci95", "list", True),
    ("result.clean_correct", "int", False),
    ("result.per_example", "dict", True),
    ("result.per_example.data", "str", True),
    ("sanity", "dict", False),
    ("sanity.flags", "str", False),
    ("sanity.checks", "list", False),
    ("attack_report", "dict", False),
)
_MISSING = object()


def _get(record: dict, dotted: str) -> object:
    value: object = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _kind_of(value: object) -> str:
    return next((k for k, ok in _KINDS.items() if ok(value)), type(value).__name__)


def validate(record: object) -> dict:
    """Raise ValueError naming the field that is wrong (missing, of the wrong JSON type, inconsistent), else return
    the record. Every field that a reader of records uses is checked, so a hand-edited record is rejected here rather
    than crashing the leaderboard later."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {_NAMES.get(_kind_of(record), type(record).__name__)}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"missing fields: {', '.join(missing)}")
    for dotted, kinds, required in FIELDS:
        parent = _get(record, dotted.rpartition(".")[0]) if "." in dotted else record
        if not isinstance(parent, dict):
            continue  # the parent's own entry reports it
        value = _get(record, dotted)
        if value is _MISSING:
            if required:
                raise ValueError(f"field '{dotted}' is missing")
            continue
        allowed = kinds.split("|")
        if not any(_KINDS[k](value) for k in allowed):
            found = _NAMES.get(_kind_of(value), type(value).__name__)
            if isinstance(value, float):
                found = f"{value}"
            want = " or ".join(_NAMES[k] for k in allowed)
            raise ValueError(f"field '{dotted}' is {found} ({json.dumps(value)[:40]}), expected {want}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {record['schema_version']} (this version reads {SCHEMA_VERSION})")
    if record["attack"]["name"] != "clean":
        for key in ("norm", "eps_255", "steps"):
            if key not in record["attack"]:
                raise ValueError(f"field 'attack.{key}' is missing (it is an attack record)")
    if "components" in record["attack"] and not all(isinstance(c, str) for c in record["attack"]["components"]):
        raise ValueError("field 'attack.components' holds a non-string")
    for i, check in enumerate(record.get("sanity", {}).get("checks", [])):
        ok = isinstance(check, dict) and isinstance(check.get("name"), str) and isinstance(check.get("passed"), bool)
        if not ok or not isinstance(check.get("detail", ""), str):
            raise ValueError(f"field 'sanity.checks[{i}]' is not a check (an object with name, passed and detail)")
    _check_result(record["result"], record["dataset"])
    return record


def _check_result(res: dict, dataset: dict) -> None:
    n, k = res["n"], res["correct"]
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"field 'result.correct' ({k}) is not between 0 and result.n ({n}), or n is not positive")
    if abs(res["accuracy"] - k / n) > 1e-12:
        raise ValueError("field 'result.accuracy' does not equal result.correct / result.n")
    ci = res["ci95"]
    if len(ci) != 2 or not all(_KINDS["num"](v) for v in ci) or not 0 <= ci[0] <= ci[1] <= 1:
        raise ValueError(f"field 'result.ci95' is not [low, high] with 0 <= low <= high <= 1 ({json.dumps(ci)[:60]})")
    if dataset["n"] < 0 or dataset["n_total"] < 0:
        raise ValueError("field 'dataset.n' or 'dataset.n_total' is negative")
    if not 0 <= res.get("clean_correct", 0) <= n:
        raise ValueError("field 'result.clean_correct' is not between 0 and result.n")
    try:
        raw = base64.b64decode(res["per_example"]["data"], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("field 'result.per_example.data' is not base64") from None
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"field 'result.per_example.data' holds {len(raw) * 8} bits for result.n = {n} images")
    # the fields must tell one story: what compare reads (the bits) and what the leaderboard reads (the counts)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise ValueError("field 'result.per_example.data' has bits set beyond result.n images")
    if int(bits[:n].sum()) != k:
        raise ValueError(
            f"field 'result.per_example.data' marks {int(bits[:n].sum())} images correct where result.correct says {k}"
        )
    if dataset["n"] != n:
        raise ValueError(f"field 'dataset.n' ({dataset['n']}) differs from result.n ({n})")
    if dataset["n"] > dataset["n_total"]:
        raise ValueError(f"field 'dataset.n' ({dataset['n']}) is more than dataset.n_total ({dataset['n_total']})")
    if res.get("ci_method") == "wilson" and any(
        abs(a - b) > 1e-9 for a, b in zip(ci, wilson_interval(k, n), strict=True)
    ):
        raise ValueError(f"field 'result.ci95' is not the Wilson interval of {k} of {n}")
