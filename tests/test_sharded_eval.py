"""Sharded evaluation under torchrun: 1, 2 and 3 gloo processes write the same records, per-example bits included,
and a sharded run killed mid-attack resumes under another number of processes to the same records."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# 27 images in batches of 4: 7 batches, so 2 and 3 processes get unequal shares and one a partial batch
RUN = ["run", "--preset", "smoke", "--images", "27", "--batch-size", "4", "--attack", "pgd,apgd-ce", "--eps", "1,4"]
RUN += ["--steps", "10", "--device", "cpu"]
#: when and how a record was computed; everything else must be equal
PROVENANCE = ("created_utc", "run", "software")


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "ZSBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _command(processes: int, out: Path, tmp_path: Path) -> list[str]:
    launch = [sys.executable, "-m", "robustbench_zs"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        launch += ["-m", "robustbench_zs"]
    return [*launch, *RUN, "--out", str(out), "--data-root", str(tmp_path / "data")]


def _zsbench(processes: int, out: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _command(processes, out, tmp_path), capture_output=True, text=True, env=_env(tmp_path), timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _records(out: Path) -> dict[str, dict]:
    found = {}
    for p in sorted((out / "records").rglob("*.json")):
        found[p.name] = json.loads(p.read_text())
    return found


def _assert_same(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert sorted(got) == sorted(want) and len(want) == 5  # clean, PGD and APGD-CE at two eps
    for name, record in want.items():
        for field in sorted(set(record) - set(PROVENANCE)):
            assert got[name][field] == record[field], f"{name}: {field} differs"
        # the per-example bits, byte for byte
        assert got[name]["result"]["per_example"] == record["result"]["per_example"]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("single")
    _zsbench(1, tmp / "out", tmp)
    return tmp / "out", _records(tmp / "out")


@pytest.mark.parametrize("processes", [2, 3])
def test_sharded_runs_write_the_records_of_one_process(tmp_path, single, processes):
    one_out, one = single
    out = tmp_path / "out"
    printed = _zsbench(processes, out, tmp_path).stdout
    got = _records(out)
    _assert_same(got, one)
    assert {r["run"]["world_size"] for r in got.values()} == {processes}
    assert {r["run"]["world_size"] for r in one.values()} == {1}
    # the cost counts every process (one thread each: OMP_NUM_THREADS=1)
    costs = [r["run"]["cost"] for r in got.values()]
    assert {(c["processes"], c["device_count"], c["attempts"]) for c in costs} == {(processes, processes, 1)}
    assert all(c["process_s_summed"] >= c["wall_s"] > 0 for c in costs)
    assert (out / "leaderboard.md").read_text() == (one_out / "leaderboard.md").read_text()
    # process 0 speaks for the job: one summary line per unit, one records line
    assert printed.count("records: ") == 1 and printed.count("clip / synthetic (n=27)") == 1, printed
    assert not list(out.rglob("*.partial.npz")) and not list(out.rglob("*.lock"))


def _done(partial: Path) -> int:
    try:
        with np.load(partial) as f:
            return int(f["done"].sum())
    except (OSError, ValueError, KeyError, EOFError):
        return 0


def _kill_job(pid: int) -> None:
    """SIGKILL torchrun's workers and then torchrun: workers run in sessions of their own (torch's elastic agent
    starts them with ``start_new_session``), so killing torchrun's process group would leave them running on."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:  # the parent's pid
            workers.append(int(stat.parent.name))
    for w in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w, signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)


def test_a_sharded_run_killed_mid_attack_resumes_with_another_process_count(tmp_path, single):
    _, one = single
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(2, out, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(tmp_path),
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            partials = list((out / "records").rglob("apgd-ce-*.partial.npz")) if (out / "records").is_dir() else []
            if any(0 < _done(p) < 27 for p in partials):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed mid-attack"
    finally:
        _kill_job(proc.pid)  # both workers and torchrun
        proc.wait()
    # between seeing a half-done attack and the kill, the job may have decided the last images (the record not yet
    # written): either way it was killed inside a record, with per-image progress on disk
    partials = {p.name: _done(p) for p in (out / "records").rglob("*.partial.npz")}
    assert any(d > 0 for d in partials.values()), partials
    printed = _zsbench(3, out, tmp_path).stdout
    _assert_same(_records(out), one)
    assert "already there" in printed and not list(out.rglob("*.partial.npz"))
    # the killed record's cost counts both attempts (the killed one's seconds were saved with its progress)
    resumed = [_records(out)[name.replace(".partial.npz", ".json")]["run"]["cost"] for name in partials]
    assert all(c["attempts"] == 2 and c["processes"] == 3 for c in resumed), resumed
