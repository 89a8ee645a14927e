"""One evaluation record as a typed value: :class:`Record`, read and checked in one place, written back unchanged.

A record is the JSON document ``zsbench run`` writes per (method, model, dataset, subset, threat, profile, seed).
:meth:`Record.from_json` is the only way in from JSON: it checks every field a reader uses (:func:`validate`), so a
hand-edited record is refused with the field named instead of crashing a table later. :meth:`Record.to_json` gives
back exactly the document that is written, keys in their order, unknown keys included: records written before this
type existed load, and round-trip, to the byte. :class:`Protocol` is the part of a record that decides which numbers
may be ranked together (attack settings, profile knobs, attack seed).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .stats import unpack_bools, wilson_interval

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

#: The top-level keys :class:`Record` has a field for, in the order ``zsbench run`` writes them.
KEYS = (
    "schema_version",
    "record_key",
    "created_utc",
    "software",
    "method",
    "method_label",
    "model",
    "dataset",
    "attack",
    "threat_label",
    "tier",
    "profile",
    "seed",
    "run",
    "result",
    "sanity",
    "attack_report",
    "defense",
    "evaluation",
)


# --------------------------------------------------------------------------------------------------- validation

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
    ("tier", "str", False),
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
    ("defense", "dict", False),
    ("defense.randomized", "bool", False),
    ("defense.inference_optimization", "bool", False),
    ("evaluation", "dict", False),
    ("evaluation.adaptive", "bool", False),
    ("evaluation.eot_samples", "int", False),
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


# ----------------------------------------------------------------------------------------------------- protocol

#: Profile knobs that change the numbers, compared as recorded.
_PROTOCOL_KEYS = ("normalization", "logit_scale", "resize", "prompts")


def _preprocess_label(profile: Mapping) -> str:
    """The preprocessing profile, without the per-dataset resolution it implies (one table spans all datasets)."""
    pre = profile.get("preprocess")
    if not isinstance(pre, dict):
        return "native resolution"
    if pre.get("profile") == "paper":
        return "paper preprocessing (CIFAR/STL-10 native, others Resize(256) + CenterCrop(224))"
    if pre.get("mode") == "native":
        return "standard preprocessing, attacked at native resolution"
    return f"standard preprocessing (model's {pre.get('interpolation')} {pre.get('mode')} resize and crop)"


def profile_knobs(profile: Mapping) -> dict:
    """The knobs of a record's profile that decide whether two rows may share a table.

    The profile's name is not one of them: two records measured under the same knobs are comparable whatever their
    profile was called (``paper`` with the paper subsample is recorded as ``custom``, and differs from ``paper`` by
    its ``paper_subsample`` knob). The attack's precision is part of the attack's settings (the table's threat);
    the leaderboard's knob notes name it beside these knobs.
    """
    return {
        **{k: profile.get(k) for k in _PROTOCOL_KEYS},
        "preprocess": _preprocess_label(profile),
        "paper_subsample": bool(profile.get("paper_subsample", False)),
    }


@dataclass(frozen=True)
class Protocol:
    """How a record's number was measured, as far as ranking it against others goes: two records share a table
    (and are paired by ``zsbench compare``) only if their protocols are equal.

    Attributes:
        attack: the attack settings as recorded (its name, norm, eps, steps, precision...; ``{"name": "clean"}``).
        knobs: the profile knobs (:func:`profile_knobs`: normalization, logit scale, resize, prompts,
            preprocessing, paper subsample); not the profile's name.
        attack_seed: the seed of the attack's random starts; None for a clean record (no attack draws anything).
        tier: the protocol tier the number belongs to (``fast``, ``gold``: ``robustbench_zs.datasets.tiers.tier_of``),
            set by the leaderboard; None (the default) leaves it out of the key, which is then as before tiers existed.
    """

    attack: Mapping[str, Any]
    knobs: Mapping[str, Any]
    attack_seed: int | None
    tier: str | None = None

    def key(self, mix_profiles: bool = False) -> str:
        """The protocol as one string (sorted JSON), the leaderboard's table key; ``mix_profiles`` leaves the knobs
        out (``"profile": "mixed"``), so records measured under different knobs share a table on request. A tier is
        in the key whenever it is set, mixed profiles or not: numbers of two tiers never share a table."""
        key = {
            "attack": dict(self.attack),
            "profile": "mixed" if mix_profiles else dict(self.knobs),
            "attack_seed": self.attack_seed,
        }
        if self.tier is not None:
            key["tier"] = self.tier
        return json.dumps(key, sort_keys=True)

    def __hash__(self) -> int:
        return hash(self.key())


# ------------------------------------------------------------------------------------------------------- record


@dataclass(frozen=True, eq=True)
class Record:
    """One evaluation record (see the module docstring). Build one from JSON with :meth:`from_json` (checked); the
    nested blocks are the JSON objects as recorded and are not to be changed (take :meth:`to_json` for a copy to
    edit).

    Attributes:
        schema_version .. result: the record's top-level fields; ``method_label``, ``threat_label``, ``sanity``,
            ``attack_report`` and ``tier`` are None where the record lacks them (a clean record has no sanity checks;
            ``tier``, ``fast`` or ``gold``, is written for a number of a protocol tier and is no part of its key;
            ``defense``, a test-time defense's: randomized, inference optimization, BPDA steps; ``evaluation``, how a
            defense's robust record attacked it: ``adaptive``, ``eot_samples``, ``bpda``).
        extra: top-level keys this version does not know, kept as read so that a round trip loses nothing.
        path: where the record was read from (None for one built in memory); not part of the record.
        key_order: the top-level keys in the order read, so :meth:`to_json` writes them back in it (empty: the
            order ``zsbench run`` writes, :data:`KEYS`, then ``extra``); not part of the record's value.
    """

    schema_version: int
    record_key: str
    created_utc: str
    software: dict
    method: str
    model: dict
    dataset: dict
    attack: dict
    profile: dict
    seed: int | None
    run: dict
    result: dict
    method_label: str | None = None
    threat_label: str | None = None
    sanity: dict | None = None
    attack_report: dict | None = None
    tier: str | None = None
    defense: dict | None = None
    evaluation: dict | None = None
    extra: dict = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_json(cls, obj: object, path: str | Path | None = None) -> Record:
        """The record of a parsed JSON document, checked by :func:`validate` (ValueError names the wrong field).

        ``obj`` is copied: changing it afterwards does not change the record. ``path``: where it was read from.
        """
        obj = copy.deepcopy(validate(obj))
        known = {k: obj[k] for k in KEYS if k in obj}
        return cls(
            **known,
            extra={k: v for k, v in obj.items() if k not in known},
            path=Path(path) if path is not None else None,
            key_order=tuple(obj),
        )

    def to_json(self) -> dict:
        """The JSON document of this record (a fresh copy), keys in the order read (or :data:`KEYS`, then the
        extra keys): for a record read from a file, ``json.dumps`` of it is that file's content."""
        values = {k: getattr(self, k) for k in KEYS}
        values = {k: v for k, v in values.items() if v is not None or k in REQUIRED}
        values.update(self.extra)
        order = [k for k in self.key_order if k in values]
        order += [k for k in (*KEYS, *self.extra) if k in values and k not in order]
        return copy.deepcopy({k: values[k] for k in order})

    def __hash__(self) -> int:
        return hash((self.record_key, self.created_utc))

    # -- what readers ask of a record

    @property
    def accuracy(self) -> float:
        """Correct images / images, 0..1."""
        return float(self.result["accuracy"])

    @property
    def ci95(self) -> tuple[float, float]:
        """The accuracy's 95% interval (Wilson), 0..1."""
        lo, hi = self.result["ci95"]
        return float(lo), float(hi)

    @property
    def n(self) -> int:
        """Images evaluated."""
        return int(self.result["n"])

    @property
    def label(self) -> str:
        """The method's label (with its options), or its id for a record without one."""
        return self.method_label if self.method_label is not None else self.method

    @property
    def threat(self) -> str:
        """The threat's label (``PGD-10 L∞ ε=1/255``, ``Clean``), or the attack's name for a record without one."""
        return self.threat_label if self.threat_label is not None else self.attack.get("name")

    @property
    def is_clean(self) -> bool:
        return self.attack.get("name") == "clean"

    def per_example(self) -> np.ndarray:
        """Per image (subset order), whether it was classified correctly (robust records: under the attack too)."""
        return unpack_bools(self.result["per_example"]["data"], self.n)

    @property
    def protocol(self) -> Protocol:
        """How the number was measured: attack settings, profile knobs and the attack seed (None when clean)."""
        return Protocol(
            attack=dict(self.attack),
            knobs=profile_knobs(self.profile),
            attack_seed=None if self.is_clean else self.seed,
        )
