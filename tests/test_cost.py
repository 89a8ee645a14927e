"""Cost in every record (issue 19): ``run.cost`` from a real tiny run, kept across a resumed evaluation, never part of
a record's key; ``zsbench leaderboard --cost``; ``reproduce --dry-run`` priced from records of the same hardware."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_zs.attacks import ATTACKS
from robustbench_zs.cli import main
from robustbench_zs.paper.estimate import dry_run_report, this_hardware
from robustbench_zs.provenance import cpu_model
from robustbench_zs.report import write_leaderboard
from robustbench_zs.results import Record, RecordStore
from robustbench_zs.results.cost import Spent, cost_block, format_cost, read_cost, record_cost, sum_costs

RUN = ["run", "--preset", "smoke", "--n", "16", "--batch-size", "8", "--eps", "1", "--no-progress"]
OLD = Path(__file__).resolve().parent / "data" / "records_before_redesign"
H100 = ("cuda", "NVIDIA H100 80GB HBM3", 8)


def _records(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "records").rglob("*.json"))}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """A real ``zsbench run --preset smoke`` on 16 images: a clean and a PGD record."""
    tmp = tmp_path_factory.mktemp("cost")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZSBENCH_CACHE", str(tmp / "cache"))
        assert main([*RUN, "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def _copy(smoke: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(smoke / "records", out / "records")
    return out


def _edit(path: Path, change) -> None:
    r = json.loads(path.read_text())
    change(r)
    path.write_text(json.dumps(r))


def test_every_new_record_carries_a_plausible_cost(smoke):
    records = _records(smoke)
    assert len(records) == 2
    threads = torch.get_num_threads()
    for name, r in records.items():
        c = r["run"]["cost"]
        assert c["device_type"] == "cpu" and c["device"] == cpu_model() and c["processes"] == 1
        assert c["threads_per_process"] == threads and c["device_count"] == threads and "gpu_hours" not in c
        assert c["attempts"] == 1 and c["images"] == r["result"]["n"] == 16
        # the whole evaluation's wall time holds the attack's (or the clean pass's) own seconds
        assert 0 < c["wall_s"] < 60 and c["wall_s"] >= r["run"]["wall_time_s"] - 1e-3, name
        assert c["process_s_summed"] == pytest.approx(c["wall_s"], abs=1e-3)
        assert c["cpu_core_hours"] == pytest.approx(c["process_s_summed"] * threads / 3600, abs=threads / 3600e3)
        # images / the unrounded wall time (wall_s is rounded to 1 ms, a cached clean pass takes a few ms)
        lo, hi = 16 / (c["wall_s"] + 5e-4), 16 / max(c["wall_s"] - 5e-4, 1e-6)
        assert lo * 0.999 <= c["images_per_s"] <= hi * 1.001
        cost = record_cost(r)
        assert cost["hardware_key"] == ("cpu", cpu_model(), threads) and cost["records"] == 1
        assert "CPU core-h on " in format_cost(cost) and "16 images" in format_cost(cost)


def test_cost_is_not_in_the_key_records_are_reused(smoke, tmp_path, capsys):
    out = _copy(smoke, tmp_path)
    # another cost (as if computed on an H100 in an hour) changes nothing the key sees
    for p in (out / "records").rglob("*.json"):
        _edit(p, lambda r: r["run"]["cost"].update(device="NVIDIA H100 80GB HBM3", wall_s=3600.0))
    before = {p: p.read_bytes() for p in (out / "records").rglob("*.json")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZSBENCH_CACHE", str(smoke.parent / "cache"))
        assert main([*RUN, "--out", str(out)]) == 0
    assert "(0 written, 2 already there)" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (out / "records").rglob("*.json")} == before


def test_a_resumed_evaluation_keeps_the_seconds_of_the_killed_attempt(tmp_path, monkeypatch):
    """An attack interrupted after 3 batches (each made to take 0.2 s) and resumed: the record's wall time counts
    the seconds the interrupted attempt saved in its progress file, and says 2 attempts."""
    base = ["run", "--datasets", "synthetic", "--n", "40", "--eps", "4", "--steps", "2", "--batch-size", "8"]
    base += ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
    base += ["--out", str(tmp_path / "out")]
    real = ATTACKS.get("pgd").run
    calls = {"n": 0}

    def slow_then_interrupted(model, x, y, threats, seeds, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        time.sleep(0.2)
        return real(model, x, y, threats, seeds, **kwargs)

    monkeypatch.setitem(ATTACKS._entries, "pgd", dataclasses.replace(ATTACKS.get("pgd"), run=slow_then_interrupted))
    assert main(base) == 130
    (partial,) = (tmp_path / "out" / "records").rglob("*.partial.npz")
    with np.load(partial) as f:
        saved = Spent.from_dict(json.loads(str(f["spent"])))
        assert int(f["done"].sum()) == 24
    assert saved.attempts == 1 and saved.wall_s >= 0.6 and saved.cpu_core_s >= 0.6

    monkeypatch.setitem(ATTACKS._entries, "pgd", dataclasses.replace(ATTACKS.get("pgd"), run=real))
    assert main(base) == 0
    (pgd,) = [r for r in _records(tmp_path / "out").values() if r["attack"]["name"] == "pgd"]
    cost = pgd["run"]["cost"]
    assert cost["attempts"] == 2 and cost["wall_s"] >= saved.wall_s
    assert cost["wall_s"] > pgd["run"]["wall_time_s"] + 0.5  # this attempt's attack alone took far less
    assert cost["cpu_core_hours"] >= saved.cpu_core_s / 3600


def test_a_progress_file_from_before_costs_still_resumes(tiny, tmp_path):
    """A progress file without seconds (written before costs were recorded), or with garbled ones, resumes, counting
    this attempt only."""
    from robustbench_zs.datasets import DATASETS
    from robustbench_zs.engine.evaluator import evaluate
    from robustbench_zs.models import NORMALIZATIONS, ZeroShotClassifier

    data = DATASETS.get("synthetic").loader(None, "test")
    mean, std = NORMALIZATIONS["clip"]
    clf = ZeroShotClassifier(tiny.model.visual, torch.randn(10, 32), tiny.image_size, mean, std, 100.0)
    state = tmp_path / "p.partial.npz"
    first = evaluate(clf, data, subset=None, batch_size=128, state_path=state, progress=False)
    assert first.spent.attempts == 1 and first.spent.wall_s > 0
    for spent in (None, np.array("{not json")):
        with np.load(state) as f:
            arrays = {k: f[k] for k in f.files if k != "spent"}
        arrays["done"][256:] = False
        if spent is not None:
            arrays["spent"] = spent
        np.savez(state, **arrays)
        again = evaluate(clf, data, subset=None, batch_size=128, state_path=state, progress=False)
        assert again.spent.attempts == 1 and np.array_equal(again.clean, first.clean)


def test_leaderboard_cost_column_and_the_default_output_unchanged(smoke, tmp_path, capsys):
    out = _copy(smoke, tmp_path)
    default = write_leaderboard(out)
    plain = {k: p.read_bytes() for k, p in default.items()}
    assert b"Cost" not in plain["markdown"] and b"cost" not in plain["csv"] and b"gpu_hours" not in plain["records_csv"]

    assert main(["leaderboard", "--out", str(out), "--cost"]) == 0
    md = (out / "leaderboard.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| clip")]
    assert len(rows) == 2 and all(line.rstrip(" |").endswith("CPU core-h") for line in rows)
    assert "| Cost " in md and f"on {cpu_model()}, " in md
    csv = (out / "leaderboard.csv").read_text().splitlines()
    assert csv[0].endswith(",cost,gpu_hours,cpu_core_hours") and "CPU core-h" in csv[1]
    assert "cpu_core_hours" in (out / "records.csv").read_text().splitlines()[0]

    # without --cost again: byte for byte what it was
    assert {k: p.read_bytes() for k, p in write_leaderboard(out).items()} == plain
    # records from before costs existed: the column says so, nothing breaks
    old = tmp_path / "old"
    shutil.copytree(OLD / "records", old / "records")
    md = (write_leaderboard(old, cost=True)["markdown"]).read_text()
    assert "| Cost " in md and "left out of the cost (no cost block)" in md


def test_garbled_or_mixed_costs_are_skipped_with_a_note(smoke, tmp_path):
    out = _copy(smoke, tmp_path)
    clean, pgd = sorted((out / "records").rglob("*.json"))
    # a second row (other weights, another model label) of PGD on two datasets, one of them computed on 8 GPUs:
    # mixed hardware
    for on_gpu in (False, True):
        r = json.loads(pgd.read_text())
        r["model"]["label"] += "-b"
        r["model"]["weights_sha256"] = "b" * 64
        if on_gpu:
            r["dataset"].update(id="stl10", name="STL-10")
            r["run"]["cost"].update(device_type="cuda", device=H100[1], device_count=8)
            r["run"]["cost"]["gpu_hours"] = r["run"]["cost"].pop("cpu_core_hours")
        pgd.with_name(f"b{on_gpu:d}-{pgd.name}").write_text(json.dumps(r))
    _edit(clean, lambda r: r["run"].update(cost="garbage"))
    _edit(pgd, lambda r: r["run"]["cost"].update(device_count=True))
    md = write_leaderboard(out, cost=True)["markdown"].read_text()
    assert "left out of the cost (unreadable cost block: not an object)" in md
    assert "left out of the cost (unreadable cost block: device_count is missing or wrong)" in md
    assert "ran on mixed hardware: " in md and f"8× {H100[1]}" in md
    garbled_row = next(line for line in md.splitlines() if line.startswith("| clip") and "-b" not in line)
    assert garbled_row.rstrip(" |").endswith("—")  # no record of the row had a readable cost
    # the estimate skips them too, with a note
    report = dry_run_report("table1", out, "standard", arch="zsbench-tiny", pretrained="random", n=16, hardware=H100)
    assert "2 records with an unreadable cost block skipped" in report


def _as_h100(smoke: Path, out: Path) -> None:
    """The smoke records as if computed on 8 H100s: 2 s (clean) and 20 s (PGD) for 16 images."""
    store = RecordStore(out)
    for r in RecordStore(smoke).iter_records():
        doc = r.to_json()
        wall = 2.0 if r.is_clean else 20.0
        doc["run"]["cost"] = cost_block(
            Spent(wall, 8 * wall, 8 * wall, 0.0, 1),
            device_type="cuda",
            device=H100[1],
            processes=8,
            per_process=1,
            images=16,
        )
        key = ("e" if r.is_clean else "f") * 64
        store.write(store.path_for("clip", "synthetic", "h100", key), Record.from_json(doc))


def test_dry_run_prices_from_records_of_the_same_hardware(smoke, tmp_path):
    kw = dict(arch="zsbench-tiny", pretrained="random", n=16, models_dir=tmp_path / "models")
    here = this_hardware("cpu")
    assert here == ("cpu", cpu_model(), torch.get_num_threads())
    report = dry_run_report("table1", smoke, "standard", hardware=here, **kw)
    runs = [line for line in report.splitlines() if "| clip " in line and "| cifar10 " in line]
    assert "| this hardware " in runs[0] and "CPU core-h" in runs[0]
    assert "96 runs priced from 2 records computed on this machine's hardware" in report

    # no record of 8 H100s: the fallback (records of any device), time only, and it says so
    report = dry_run_report("table1", smoke, "standard", hardware=H100, **kw)
    runs = [line for line in report.splitlines() if "| clip " in line and "| cifar10 " in line]
    assert "| fallback " in runs[0] and "GPU-h" not in runs[0]
    assert f"no record of this architecture was computed on this machine's hardware (8× {H100[1]})" in report

    # with records of 8 H100s: 16 images at (2 + 20) s per 16 images and 8 GPUs = 22 s and 22*8/3600 GPU-h
    out = _copy(smoke, tmp_path)
    _as_h100(smoke, out)
    report = dry_run_report("table1", out, "standard", hardware=H100, **kw)
    runs = [line for line in report.splitlines() if "| clip " in line and "| cifar10 " in line]
    assert "| this hardware " in runs[0] and "| 0.0489 GPU-h " in runs[0] and runs[0].rstrip(" |").endswith("22 s")
    assert f"96 runs priced from 2 records computed on this machine's hardware (8× {H100[1]})" in report
    # and the CPU's records still price a run on this CPU, separately
    assert "| this hardware " in dry_run_report("table1", out, "standard", hardware=here, **kw)


def test_read_cost_never_raises():
    good = cost_block(
        Spent(10.0, 10.0, 0.0, 40.0, 1), device_type="cpu", device="X", processes=1, per_process=4, images=100
    )
    assert read_cost({"run": {"cost": good}})[0]["hours"] == {"CPU core-h": pytest.approx(40 / 3600, rel=1e-3)}
    assert read_cost({"run": {}}) == (None, "no cost block") and read_cost({}) == (None, "no run block")
    for bad in (
        [],
        {"wall_s": float("nan")},
        {**good, "wall_s": -1},
        {**good, "device": 3},
        {**good, "cpu_core_hours": "1"},
        {k: v for k, v in good.items() if k != "cpu_core_hours"},
    ):
        cost, why = read_cost({"run": {"cost": bad}})
        assert cost is None and why.startswith("unreadable cost block"), bad
    both = sum_costs([read_cost({"run": {"cost": good}})[0], record_cost({"run": {"cost": {**good, "device": "Y"}}})])
    assert both["records"] == 2 and both["hardware_key"] is None and "mixed hardware" in format_cost(both)
    assert sum_costs([]) is None and format_cost(None) == "—"
    # resumed on a GPU after a CPU attempt: both kinds of hours are kept
    mixed = cost_block(
        Spent(5.0, 5.0, 3.0, 2.0, 2), device_type="cuda", device="G", processes=1, per_process=1, images=8
    )
    assert set(read_cost({"run": {"cost": mixed}})[0]["hours"]) == {"GPU-h", "CPU core-h"}
