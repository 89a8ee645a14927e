"""The typed record (issue 17): read from JSON in one checked place, written back to the byte, and its protocol.

The records under ``tests/data/records_before_redesign`` were written by the code before :class:`Record` existed:
each must come back from ``from_json``/``to_json`` unchanged, keys in their order, and the store must write it back
to the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robustbench_zs.results import Protocol, Record, RecordStore, per_example
from robustbench_zs.results.record import KEYS

RECORDS = Path(__file__).resolve().parent / "data" / "records_before_redesign" / "records"
PATHS = sorted(RECORDS.rglob("*.json"))


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _record(dataset: str, name: str) -> Record:
    (path,) = RECORDS.glob(f"clip/{dataset}/{name}-*.json")
    return Record.from_json(_json(path), path)


def test_there_are_old_records_to_test():
    assert len(PATHS) == 16


@pytest.mark.parametrize("path", PATHS, ids=[p.relative_to(RECORDS).as_posix() for p in PATHS])
def test_from_json_then_to_json_is_the_identity_on_every_old_record(path, tmp_path):
    obj = _json(path)
    record = Record.from_json(obj, path)
    assert json.dumps(record.to_json()) == json.dumps(obj)  # the same keys in the same order, the same values
    assert record.path == path and record.extra == {}
    again = Record.from_json(record.to_json())
    assert again == record and json.dumps(again.to_json()) == json.dumps(obj)
    # and the store writes it back to the byte
    out = tmp_path / "copy.json"
    RecordStore(tmp_path).write(out, record)
    assert out.read_bytes() == path.read_bytes()


def test_the_readers_properties_are_the_records_fields():
    record = _record("world-colour", "pgd-linf-eps4")
    res = _json(record.path)["result"]
    assert record.accuracy == res["accuracy"] and record.ci95 == tuple(res["ci95"]) and record.n == res["n"]
    mask = record.per_example()
    assert mask.dtype == bool and mask.size == record.n and int(mask.sum()) == res["correct"]
    np.testing.assert_array_equal(mask, per_example(_json(record.path)))  # the old reader of the dict agrees
    assert record.label == "clip" and record.threat == "PGD-10 L∞ ε=4/255" and not record.is_clean
    assert record.sanity is not None and record.attack_report is None
    clean = _record("world-colour", "clean")
    assert clean.is_clean and clean.sanity is None and "sanity" not in clean.to_json()


def test_changing_to_json_or_the_input_never_changes_the_record():
    path = PATHS[0]
    obj = _json(path)
    record = Record.from_json(obj)
    obj["result"]["n"] = -1
    out = record.to_json()
    out["dataset"]["id"] = "elsewhere"
    assert record.n == _json(path)["result"]["n"] and record.dataset["id"] == _json(path)["dataset"]["id"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("method", 3),
        ("seed", "0"),
        ("result.n", "64"),
        ("dataset.n_total", 64.5),
        ("attack.eps_255", "4"),
        ("profile.paper_subsample", "no"),
        ("sanity.flags", None),
    ],
)
def test_a_wrong_field_type_is_refused_with_the_field_named(field, value):
    obj = _json(next(p for p in PATHS if p.name.startswith("pgd-")))
    *parents, last = field.split(".")
    node = obj
    for part in parents:
        node = node[part]
    node[last] = value
    with pytest.raises(ValueError, match=f"field '{field}' is "):
        Record.from_json(obj)


def test_a_missing_field_or_a_non_object_is_refused():
    obj = _json(PATHS[0])
    del obj["result"]
    with pytest.raises(ValueError, match="missing fields: result"):
        Record.from_json(obj)
    with pytest.raises(ValueError, match="not a JSON object but a list"):
        Record.from_json([1, 2])


def test_unknown_keys_survive_a_round_trip_in_their_place(tmp_path):
    path = PATHS[0]
    obj = {}
    for k, v in _json(path).items():
        obj[k] = v
        if k == "dataset":  # a key of a later version, between two known ones
            obj["reviewed_by"] = {"name": "a person", "ok": True}
    obj["notes"] = ["kept"]
    record = Record.from_json(obj)
    assert record.extra == {"reviewed_by": {"name": "a person", "ok": True}, "notes": ["kept"]}
    assert json.dumps(record.to_json()) == json.dumps(obj)
    # through the store too
    out = tmp_path / "records" / "clip" / "synthetic" / path.name
    store = RecordStore(tmp_path)
    store.write(out, record)
    assert json.dumps(store.read(out).to_json()) == json.dumps(obj)


def test_a_record_built_in_memory_writes_its_keys_in_the_runs_order():
    obj = _json(PATHS[0])
    built = Record(**{k: obj[k] for k in KEYS if k in obj})
    assert built == Record.from_json(obj)  # where it came from and the key order are not part of the value
    assert list(built.to_json()) == list(obj) and built.path is None


def test_records_measured_under_the_same_knobs_have_equal_protocols():
    # the same attack, knobs and seed on two datasets: one table on the leaderboard
    colour, count = _record("world-colour", "pgd-linf-eps1"), _record("world-count", "pgd-linf-eps1")
    assert colour.dataset["id"] != count.dataset["id"]
    assert colour.protocol == count.protocol and hash(colour.protocol) == hash(count.protocol)
    assert colour.protocol.key() == count.protocol.key()
    # the profile's name is not a knob; when and where it ran is not either
    renamed = colour.to_json()
    renamed["profile"]["name"] = "custom"
    renamed["run"]["device"] = "another machine"
    assert Record.from_json(renamed).protocol == colour.protocol
    # a clean record has no attack seed: a full clean pass draws nothing
    assert _record("world-colour", "clean").protocol.attack_seed is None
    assert colour.protocol.attack_seed == colour.seed


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["profile"].update(normalization="imagenet"),
        lambda r: r["profile"].update(logit_scale="1"),
        lambda r: r["profile"].update(paper_subsample=True),
        lambda r: r["profile"]["preprocess"].update(profile="paper"),
        lambda r: r["attack"].update(precision="bf16"),
        lambda r: r["attack"].update(steps=20),
        lambda r: r.update(seed=1),
    ],
    ids=["normalization", "logit scale", "paper subsample", "preprocessing", "attack precision", "steps", "seed"],
)
def test_a_knob_that_differs_makes_the_protocols_differ(change):
    record = _record("world-colour", "pgd-linf-eps1")
    other = record.to_json()
    change(other)
    protocol = Record.from_json(other).protocol
    assert isinstance(protocol, Protocol)
    assert protocol != record.protocol and protocol.key() != record.protocol.key()
    # with --mix-profiles the knobs leave the key: only the attack and its seed still separate tables
    same_attack = protocol.attack == record.protocol.attack and protocol.attack_seed == record.protocol.attack_seed
    assert (protocol.key(mix_profiles=True) == record.protocol.key(mix_profiles=True)) is same_attack
