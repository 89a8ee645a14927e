"""Crash safety: a run killed with SIGKILL and started again, and two runs sharing a results folder, end with the
records of one uninterrupted run: no partial, duplicate or clobbered record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# small batches, so that the run spends several seconds between its first and its last record
RUN = ["run", "--preset", "smoke", "--n", "96", "--batch-size", "8", "--eps", "1,4", "--no-progress"]


def _zsbench(out: Path, tmp_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "ZSBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "robustbench_zs", *RUN, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _results(out: Path) -> dict[str, dict]:
    """Every record, keyed by file name, with only what does not depend on when or how fast it ran."""
    found = {}
    for p in sorted((out / "records").rglob("*.json")):
        r = json.loads(p.read_text())
        found[p.name] = {
            "key": r["record_key"],
            "result": r["result"],
            "attack": r["attack"],
            "sanity": r.get("sanity"),
        }
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    proc = _zsbench(tmp / "out", tmp)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    found = _results(tmp / "out")
    assert len(found) == 3
    return found


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_records(tmp_path, reference):
    out = tmp_path / "out"
    proc = _zsbench(out, tmp_path)
    records = out / "records"
    deadline = time.monotonic() + 240
    # kill it while an attack is half done: its per-example progress file exists
    while proc.poll() is None and time.monotonic() < deadline:
        if records.exists() and list(records.rglob("pgd-*.partial.npz")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert list(records.rglob("*.partial.npz")), "killed before any attack progress was saved"
    done_before = set(_results(out))
    rerun = _zsbench(out, tmp_path)
    log, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log
    assert _results(out) == reference
    assert not list(records.rglob("*.partial.npz"))
    assert f"{len(reference) - len(done_before)} written, {len(done_before)} already there" in log


def test_two_runs_on_one_results_folder_compute_each_record_once(tmp_path, reference):
    out = tmp_path / "out"
    first, second = _zsbench(out, tmp_path), _zsbench(out, tmp_path)
    logs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, logs
    assert _results(out) == reference
    written = []
    for log in logs:
        line = next(x for x in log.splitlines() if x.startswith("records: "))
        written.append(int(line.split("(")[1].split(" written")[0]))
    assert sum(written) == len(reference), logs  # no record was computed twice
