"""Records: every traceability field, round-trip of per-example results, skip / force, Wilson intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from robustbench_zs.attacks import Threat
from robustbench_zs.engine.runner import RunConfig, run
from robustbench_zs.models import HeadKnobs, ModelSpec
from robustbench_zs.results import RecordStore, per_example, validate, wilson_interval
from robustbench_zs.results.stats import pack_bools, unpack_bools

TINY = ModelSpec("zsbench-tiny", "random", init_seed=0)


def _cfg(tmp_path, **kw) -> RunConfig:
    base = dict(
        methods=("clip",),
        datasets=("synthetic",),
        model=TINY,
        threats=(Threat("pgd", "linf", 1 / 255, 3, 1 / 255), Threat("pgd", "linf", 4 / 255, 3, 1 / 255)),
        data_root=tmp_path / "data",
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        n=96,
        seed=1,
        device="cpu",
        batch_size=48,
        progress=False,
    )
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture
def records(tmp_path):
    summary = run(_cfg(tmp_path), echo=lambda s: None)
    return tmp_path, summary, [json.loads(p.read_text()) for p in summary.written]


def test_one_record_per_threat_with_every_field(records):
    _, summary, recs = records
    assert len(recs) == 3
    by = {r["attack"]["name"] + str(r["attack"].get("eps_255", "")): r for r in recs}
    assert set(by) == {"clean", "pgd1.0", "pgd4.0"}
    for r in recs:
        validate(r)
        assert r["software"]["robustbench_zs"] and r["software"]["torch"] and "git_sha" in r["software"]
        assert r["method"] == "clip"
        m = r["model"]
        assert m["arch"] == "zsbench-tiny" and m["pretrained"] == "random" and m["init_seed"] == 0
        assert len(m["weights_sha256"]) == 64 and m["checkpoint_sha256"] is None  # random weights have no file
        d = r["dataset"]
        assert d["id"] == "synthetic" and d["split"] == "test" and d["n"] == 96 and d["n_total"] == 512
        assert d["seed"] == 1 and len(d["indices_sha256"]) == 64 and len(d["content_sha256"]) == 64
        p = r["profile"]
        assert p["normalization"] == "clip" and p["logit_scale"] == "100" and p["logit_scale_value"] == 100.0
        assert p["prompts"] == "paper" and p["templates"] == ["This is a photo of a {}"] and p["resize"] == "bicubic"
        assert r["seed"] == 1 and r["run"]["wall_time_s"] >= 0 and r["run"]["batch_size"] == 48
        res = r["result"]
        assert res["n"] == 96 and res["accuracy"] == res["correct"] / 96
        assert res["ci95"] == list(wilson_interval(res["correct"], 96))
        assert per_example(r).sum() == res["correct"] and per_example(r).size == 96
    pgd = by["pgd1.0"]["attack"]
    assert pgd["norm"] == "linf" and pgd["steps"] == 3 and pgd["step_size"] == pytest.approx(1 / 255)
    assert pgd["random_start"] is True and pgd["precision"] == "fp32" and pgd["loss"] == "ce"
    assert by["pgd4.0"]["result"]["clean_correct"] == by["clean"]["result"]["correct"]
    # a robust example is always a clean-correct one
    clean = per_example(by["clean"])
    assert not np.any(per_example(by["pgd4.0"]) & ~clean)


def test_rerun_skips_existing_and_force_recomputes(records):
    tmp_path, first, _ = records
    again = run(_cfg(tmp_path), echo=lambda s: None)
    assert again.written == [] and sorted(again.skipped) == sorted(first.written)
    forced = run(_cfg(tmp_path, force=True), echo=lambda s: None)
    assert sorted(forced.written) == sorted(first.written)
    # a new eps adds one record and reuses the rest
    more = run(_cfg(tmp_path, threats=(Threat("pgd", "linf", 2 / 255, 3, 1 / 255),)), echo=lambda s: None)
    assert len(more.written) == 1 and len(more.skipped) == 1
    assert not list((tmp_path / "out").rglob("*.tmp")), "no temporary files may be left behind"


def test_different_knobs_or_subsets_make_different_records(records):
    tmp_path, first, _ = records
    other = run(_cfg(tmp_path, knobs=HeadKnobs(normalization="imagenet", logit_scale="1")), echo=lambda s: None)
    assert len(other.written) == 3 and not set(other.written) & set(first.written)
    sub = run(_cfg(tmp_path, n=64), echo=lambda s: None)
    assert len(sub.written) == 3


def test_invalid_record_files_are_recomputed_and_skipped_by_readers(records):
    tmp_path, first, _ = records
    broken = first.written[0]
    broken.write_text("{ not json")
    with pytest.warns(UserWarning, match="skipping invalid record"):
        assert len(list(RecordStore(tmp_path / "out").iter_records())) == 2
    again = run(_cfg(tmp_path), echo=lambda s: None)
    assert again.written == [broken]


def test_wilson_interval_worked_example():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553 to 0.3662
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    assert not math.isnan(wilson_interval(0, 1)[0])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000])
def test_per_example_bits_round_trip(n):
    mask = np.random.default_rng(n).random(n) > 0.5
    np.testing.assert_array_equal(unpack_bools(pack_bools(mask), n), mask)


def test_full_split_clean_record_is_shared_across_seeds(tmp_path):
    full = run(_cfg(tmp_path, n=None, seed=0), echo=lambda s: None)
    other = run(_cfg(tmp_path, n=None, seed=5), echo=lambda s: None)
    clean = [p for p in full.written if p.name.startswith("clean")]
    assert len(clean) == 1 and clean[0] in other.skipped, "a full clean pass does not depend on the seed"
    assert len(other.written) == 2, "the attacks' random starts do"
    assert json.loads(clean[0].read_text())["seed"] is None


def test_n_at_or_above_the_split_size_is_the_full_split(tmp_path):
    msgs = []
    first = run(_cfg(tmp_path, n=600), echo=msgs.append)
    assert any("evaluating all of them" in m for m in msgs)
    again = run(_cfg(tmp_path, n=None), echo=lambda s: None)
    assert again.written == [] and sorted(again.skipped) == sorted(first.written)


def test_changed_dataset_content_is_recomputed(tmp_path):
    from dataset_fixtures import write_cifar10

    write_cifar10(tmp_path / "data", n_test=16, seed=0)
    cfg = _cfg(tmp_path, datasets=("cifar10",), n=None, threats=())
    first = run(cfg, echo=lambda s: None)
    write_cifar10(tmp_path / "data", n_test=16, seed=1)  # same size, other images
    second = run(cfg, echo=lambda s: None)
    assert len(second.written) == 1 and second.written != first.written


def test_skip_requires_the_full_key(records):
    tmp_path, first, _ = records
    path = first.written[0]
    rec = json.loads(path.read_text())
    rec["record_key"] = rec["record_key"][:12] + "0" * 52  # same file name, other key
    path.write_text(json.dumps(rec))
    again = run(_cfg(tmp_path), echo=lambda s: None)
    assert again.written == [path]


def test_clean_pass_runs_once_per_dataset_and_is_reused(tmp_path, monkeypatch):
    """The clean forward runs once per dataset; a later run with a new eps takes it from the clean record."""
    from robustbench_zs.engine import runner

    real = runner.evaluate
    given = []

    def spy(*a, **k):
        given.append(k.get("clean") is not None)
        return real(*a, **k)

    monkeypatch.setattr(runner, "evaluate", spy)
    first = run(_cfg(tmp_path), echo=lambda s: None)
    assert given == [False, True, True]  # clean, then both eps reuse its mask
    given.clear()
    more = run(_cfg(tmp_path, threats=(Threat("pgd", "linf", 2 / 255, 3, 1 / 255),)), echo=lambda s: None)
    assert given == [True] and len(more.written) == 1
    # the reused mask gives the same robust-only-if-clean-correct records as a fresh computation
    fresh = run(_cfg(tmp_path, force=True), echo=lambda s: None)
    assert sorted(fresh.written) == sorted(first.written)
    robust = json.loads(more.written[0].read_text())
    (clean_path,) = [p for p in first.written if p.name.startswith("clean")]
    assert not np.any(per_example(robust) & ~per_example(json.loads(clean_path.read_text())))


def test_interrupted_evaluation_resumes_with_the_same_per_example_results(tmp_path, monkeypatch) -> None:
    """An attack interrupted mid-split continues from the images already decided and ends identical."""
    import dataclasses

    from robustbench_zs.attacks import ATTACKS
    from robustbench_zs.cli import main

    base = ["run", "--datasets", "synthetic", "--n", "96", "--eps", "4", "--steps", "3", "--batch-size", "16"]
    base += ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0

    real = ATTACKS.get("pgd").run
    attacked = {"batches": 0, "images": 0}

    def use(run_fn) -> None:
        monkeypatch.setitem(ATTACKS._entries, "pgd", dataclasses.replace(ATTACKS.get("pgd"), run=run_fn))

    def interrupted(model, x, y, threats, seeds, **kwargs):
        attacked["batches"] += 1
        if attacked["batches"] == 4:
            raise KeyboardInterrupt
        return real(model, x, y, threats, seeds, **kwargs)

    def counting(model, x, y, threats, seeds, **kwargs):
        attacked["images"] += len(x)
        return real(model, x, y, threats, seeds, **kwargs)

    use(interrupted)
    assert main([*base, "--out", str(tmp_path / "b")]) == 130
    (partial,) = (tmp_path / "b" / "records").rglob("*.partial.npz")
    done = int(np.load(partial)["done"].sum())
    assert done == 3 * 16
    use(counting)
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    assert attacked["images"] == 96 - done  # only the undecided images were attacked
    assert not list((tmp_path / "b" / "records").rglob("*.partial.npz"))
    results = [json.loads(next((tmp_path / run / "records").rglob("pgd-*.json")).read_text())["result"] for run in "ab"]
    assert results[0] == results[1]
