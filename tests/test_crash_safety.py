"""Crash safety: a run killed with SIGKILL and started again, and two runs sharing a results folder, end with the
records of one uninterrupted run: no partial, duplicate or clobbered record, and the rerun continues from the
killed run's per-example progress instead of starting over. Also: a non-finite training loss stops training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# the training tests' setup: tiny model on synthetic data (tests/ is on sys.path under pytest's default import mode)
from robustbench_zs.cli import main
from robustbench_zs.engine import evaluator
from robustbench_zs.results.store import ensure_writable

# small batches, so that the run spends several seconds between its first and its last record
RUN = ["run", "--preset", "smoke", "--n", "96", "--batch-size", "8", "--eps", "1,4", "--no-progress"]
# a long clean pass: 200 batches of 2 images
CLEAN_RUN = ["run", "--preset", "smoke", "--attack", "none", "--n", "400", "--batch-size", "2", "--no-progress"]
#: what may differ between two runs of the same records: when they ran and how (time, device, cache hits), and with
#: which copy of the package (a subprocess started in the repository imports its source tree, with a git commit;
#: pytest under tox imports the installed copy, without one)
PROVENANCE = ("created_utc", "run", "software")


def _zsbench(out: Path, tmp_path: Path, *extra: str, argv: list[str] = RUN) -> subprocess.Popen:
    env = {**os.environ, "ZSBENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "robustbench_zs", *argv, "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _results(out: Path) -> dict[str, dict]:
    """Every record, keyed by file name, with every field but those that say when or how fast it ran."""
    found = {}
    for p in sorted((out / "records").rglob("*.json")):
        r = json.loads(p.read_text())
        found[p.name] = {k: v for k, v in r.items() if k not in PROVENANCE}
    return found


def _assert_same_records(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert sorted(got) == sorted(want)
    for name, record in want.items():
        for field in sorted(set(record) | set(got[name])):
            assert got[name].get(field) == record.get(field), f"{name}: field {field!r} differs"


def _kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled from outside: the code has no fault hooks)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed {what}; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _done(partial: Path) -> int:
    try:
        with np.load(partial) as f:
            return int(f["done"].sum())
    except (OSError, ValueError, KeyError):  # replaced or half-visible right now: not yet
        return 0


def _spy_on_resumes(monkeypatch) -> list[tuple[str, int, int]]:
    """Per evaluation of the (in-process) rerun: (progress file, images already decided when it opened, images
    evaluated)."""
    calls: list[tuple[str, int, int]] = []
    real_open = evaluator._State.open.__func__
    real_subset = evaluator.TorchSubset

    def open_(cls, path, indices, slugs):
        st = real_open(cls, path, indices, slugs)
        calls.append((Path(path).name if path else "", int(st.done.sum()), -1))
        return st

    def subset(dataset, indices):
        name, done, _ = calls[-1]
        calls[-1] = (name, done, len(indices))
        return real_subset(dataset, indices)

    monkeypatch.setattr(evaluator._State, "open", classmethod(open_))
    monkeypatch.setattr(evaluator, "TorchSubset", subset)
    return calls


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    proc = _zsbench(tmp / "out", tmp)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    found = _results(tmp / "out")
    assert len(found) == 3
    return found


def test_sigkill_mid_attack_then_rerun_resumes_and_gives_the_uninterrupted_records(
    tmp_path, reference, capsys, monkeypatch
):
    out = tmp_path / "out"
    records = out / "records"
    proc = _zsbench(out, tmp_path)
    # kill it while an attack is half done: its per-example progress file exists and holds decided images
    _kill_when(proc, lambda: any(_done(p) for p in records.rglob("pgd-*.partial.npz")), "during an attack")
    partials = {p.name: _done(p) for p in records.rglob("*.partial.npz")}
    assert partials and all(partials.values()), "killed before any attack progress was saved"
    done_before = set(_results(out))

    calls = _spy_on_resumes(monkeypatch)  # the rerun runs in this process, so it can be watched
    assert main([*RUN, "--out", str(out)]) == 0
    log = capsys.readouterr().out
    _assert_same_records(_results(out), reference)
    assert not list(records.rglob("*.partial.npz")) and not [p for p in records.rglob("*") if "tmp" in p.name]
    assert not list(records.rglob("*.lock")), "the killed run's lock file stays after the rerun"
    assert f"{len(reference) - len(done_before)} written, {len(done_before)} already there" in log
    resumed = [c for c in calls if c[0] in partials]
    assert resumed, calls
    for name, done, evaluated in resumed:  # it went on from the saved images: only the others were attacked
        assert done == partials[name] and evaluated == 96 - done, calls


def test_sigkill_during_the_clean_pass_then_rerun_resumes_it(tmp_path, capsys, monkeypatch):
    ref = tmp_path / "ref"
    assert main([*CLEAN_RUN, "--out", str(ref)]) == 0
    reference = _results(ref)
    out = tmp_path / "out"
    records = out / "records"
    proc = _zsbench(out, tmp_path, argv=CLEAN_RUN)
    _kill_when(proc, lambda: any(_done(p) >= 8 for p in records.rglob("clean-*.partial.npz")), "in its clean pass")
    assert not list(records.rglob("clean-*.json")), "the clean record was written before the kill"
    (partial,) = records.rglob("clean-*.partial.npz")
    done = _done(partial)
    assert 0 < done < 400
    # what a kill just before a rename leaves: the record's temporary JSON and a progress file's temporary copy
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = partial.name.replace(".partial.npz", ".json")
    strays = [
        partial.with_name(f".{record}.{dead.pid}.x1y2z3ab.tmp"),
        partial.with_name(f".{partial.stem}.{dead.pid}.tmp.npz"),
    ]
    for p in strays:
        p.write_bytes(b'{"schema_version": 1, "res')

    calls = _spy_on_resumes(monkeypatch)
    capsys.readouterr()
    assert main([*CLEAN_RUN, "--out", str(out)]) == 0
    assert calls == [(partial.name, done, 400 - done)], "the clean pass went on from the killed run's images"
    _assert_same_records(_results(out), reference)
    assert not list(records.rglob("*.partial.npz"))
    assert not [p for p in records.rglob("*") if "tmp" in p.name], "stray temporary files were removed"


def test_two_runs_on_one_results_folder_compute_each_record_once(tmp_path, reference):
    out = tmp_path / "out"
    first, second = _zsbench(out, tmp_path), _zsbench(out, tmp_path)
    logs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, logs
    _assert_same_records(_results(out), reference)
    written = []
    for log in logs:
        line = next(x for x in log.splitlines() if x.startswith("records: "))
        written.append(int(line.split("(")[1].split(" written")[0]))
    assert sum(written) == len(reference), logs  # no record was computed twice
    assert not list(out.rglob("*.lock")), "the runs left lock files behind"


def test_record_locks_exclude_each_other_and_leave_no_file(tmp_path):
    """Four processes take one record's lock 100 times each and do a slow read-modify-write under it: no update is
    lost (the lock excludes, also across the removal of its file by each holder), and no lock file stays."""
    record = tmp_path / "records" / "m" / "d" / "pgd-0123456789ab.json"
    counter = tmp_path / "counter"
    counter.write_text("0")
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from robustbench_zs.results.store import record_lock\n"
        "record, counter = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "for _ in range(100):\n"
        "    with record_lock(record):\n"
        "        n = int(counter.read_text())\n"
        "        time.sleep(0.001)\n"
        "        counter.write_text(str(n + 1))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(record), str(counter)]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert counter.read_text() == "400"  # 25 rounds each were too few to catch a lock that fails to exclude
    assert not list(record.parent.iterdir())


def test_a_lock_file_left_by_a_killed_holder_is_taken_and_removed(tmp_path):
    """The kernel frees a killed holder's lock; its empty file is reused by the next run and then removed. A
    waiter tells its caller once that it waits."""
    from robustbench_zs.results.store import record_lock

    record = tmp_path / "pgd-0123456789ab.json"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from robustbench_zs.results.store import record_lock\n"
        "with record_lock(Path(sys.argv[1])):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(record)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    lock = tmp_path / ".pgd-0123456789ab.lock"
    assert lock.exists()
    said: list[str] = []

    def give_up(*_):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(TimeoutError), record_lock(record, said.append):
            pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert said == ["another zsbench process is computing pgd-0123456789ab.json; waiting for it"]
    holder.kill()
    holder.wait()
    assert lock.exists()  # a killed holder cannot remove its file
    with record_lock(record, said.append):
        assert lock.exists()
    assert len(said) == 1 and not lock.exists()


def test_a_new_run_removes_temporary_files_of_dead_processes_only(tmp_path):
    folder = tmp_path / "out" / "records" / "clip" / "synthetic"
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    old = time.time() - 3600
    stale = [
        folder / f".clean-0123456789ab.json.{dead.pid}.abcd1234.tmp",
        folder / f".pgd-x.partial.{dead.pid}.tmp.npz",
    ]
    fresh = folder / f".pgd-y.json.{dead.pid}.abcd1234.tmp"  # a write of another machine may be in flight
    alive = folder / f".pgd-z.json.{os.getpid()}.abcd1234.tmp"
    other = folder / "notes.tmp"  # not one of ours
    for p in [*stale, fresh, alive, other]:
        p.write_text("x")
    for p in [*stale, alive, other]:
        os.utime(p, (old, old))
    ensure_writable(tmp_path / "out")
    assert [p.exists() for p in [*stale, fresh, alive, other]] == [False, False, True, True, True]
