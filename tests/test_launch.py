"""Sweeps through submitit (``--launcher``) and ``zsbench status``.

The sweep test runs real jobs through submitit's local executor (the same jobs Slurm would run, as local processes)
and checks that they write exactly the records of one ``zsbench run``. Slurm itself is exercised with stand-ins for
``srun``, ``sbatch`` and ``sacct`` on PATH: the batch script submitit writes from our options, and the states
``status`` reads back. Hostile and careless input (flags, sweep folders, state files) is refused or shown, never
followed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from robustbench_zs.cli import main
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.launch import SWEEP_FORMAT, parse_time_limit, read_sweep, read_sweeps, run_job

TINY = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu"]
#: 2 methods x 2 datasets x 2 eps (and the clean pass): 12 records
SWEEP = ["run", "--methods", "clip,ft_standard", "--datasets", "synthetic,world-colour", "--attack", "pgd"]
SWEEP += ["--eps", "1,4", "--images", "12", "--batch-size", "4", "--no-progress", *TINY]
#: when and how a record was computed; everything else must be equal
PROVENANCE = ("created_utc", "run", "software")


def _records(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted((out / "records").rglob("*.json"))}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A trained ft_standard checkpoint, a sweep of 4 local jobs, and the same plan run in one process."""
    tmp = tmp_path_factory.mktemp("sweep")
    mp = pytest.MonkeyPatch()
    mp.setenv("ZSBENCH_CACHE", str(tmp / "cache"))
    mp.setenv("OMP_NUM_THREADS", "1")
    common = ["--data-root", str(tmp / "data"), "--models-dir", str(tmp / "models")]
    train = ["train", "--method", "ft_standard", "--train-dataset", "synthetic", "--name", "ft", *TINY, *common]
    sweep = [*SWEEP, *common, "--checkpoint", f"ft_standard={tmp / 'models' / 'ft'}"]
    try:
        assert main([*train, "--batch-size", "32", "--epochs", "1", "--no-progress"]) == 0
        assert main([*sweep, "--out", str(tmp / "swept"), "--launcher", "local", "--wait"]) == 0
        assert main([*sweep, "--out", str(tmp / "single")]) == 0
    finally:
        mp.undo()
    return tmp


def test_a_sweep_of_local_jobs_writes_the_records_of_one_run(swept):
    got, want = _records(swept / "swept"), _records(swept / "single")
    assert sorted(got) == sorted(want) and len(want) == 12
    for name, record in want.items():
        for field in sorted(set(record) - set(PROVENANCE)):
            assert got[name][field] == record[field], f"{name}: {field} differs"
    # the leaderboard written after --wait equals the one-process run's
    assert (swept / "swept" / "leaderboard.csv").read_text() == (swept / "single" / "leaderboard.csv").read_text()
    (sweep,) = read_sweeps(swept / "swept")
    assert [j.state for j in sweep.jobs] == ["done"] * 4  # one job per (method, dataset)
    assert sorted(j.unit for j in sweep.jobs) == sorted(
        f"{m} / {d}" for m in ("clip", "ft_standard") for d in ("synthetic", "world-colour")
    )
    assert sorted(r for j in sweep.jobs for r in j.records) == sorted(got)
    manifest = json.loads((sweep.folder / "sweep.json").read_text())
    assert manifest["command"][:2] == ["zsbench", "run"] and manifest["launcher"]["launcher"] == "local"


def test_status_shows_the_sweeps_jobs_done_with_their_records(swept, capsys):
    assert main(["status", "--out", str(swept / "swept")]) == 0
    printed = capsys.readouterr().out
    assert ": 4 done" in printed and printed.count("3 (3 written, 0 reused)") == 4
    assert printed.count("CPU core-h on") >= 5  # each job's records, and the sweep's total
    assert "cost of the records written:" in printed and "144 images" in printed  # 12 records x 12 images


@pytest.mark.slow
def test_train_through_the_local_launcher(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZSBENCH_CACHE", str(tmp_path / "cache"))
    argv = ["train", "--method", "ft_standard", "--train-dataset", "synthetic", "--name", "ft", *TINY]
    argv += ["--data-root", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models"), "--epochs", "1"]
    assert main([*argv, "--batch-size", "32", "--no-progress", "--launcher", "local", "--wait"]) == 0
    assert (tmp_path / "models" / "ft" / "meta.json").is_file()
    capsys.readouterr()
    assert main(["status", "--out", str(tmp_path / "models")]) == 0  # a training sweep lives under the models root
    printed = capsys.readouterr().out
    assert "train ft_standard on synthetic" in printed and ": 1 done" in printed


def test_a_method_without_checkpoint_is_one_job_that_trains_it_first(tmp_path, monkeypatch):
    from robustbench_zs.cli.run import handle  # noqa: F401 - the CLI module plans through launch.plan_run_jobs
    from robustbench_zs.engine.runner import RunConfig
    from robustbench_zs.launch import plan_run_jobs
    from robustbench_zs.models import ModelSpec

    cfg = RunConfig(
        methods=("clip", "tecoa"),
        datasets=("synthetic", "world-colour"),
        model=ModelSpec("zsbench-tiny", "random"),
        threats=(),
        data_root=tmp_path / "data",
        out_dir=tmp_path / "out",
        models_dir=tmp_path / "models",
    )
    notes = []
    jobs = plan_run_jobs(cfg, echo=notes.append)
    assert [(j.methods, j.datasets, j.trains) for j in jobs] == [
        (("clip",), ("synthetic",), ()),
        (("clip",), ("world-colour",), ()),
        (("tecoa",), ("synthetic", "world-colour"), ("tecoa",)),  # never two jobs training one checkpoint
    ]
    assert "tecoa has no checkpoint yet" in notes[0]


def _fake_slurm(tmp_path: Path, monkeypatch, sacct_states: dict[str, str] | None = None) -> Path:
    """``srun``, ``sbatch`` (keeps the script, answers job 4242) and ``sacct`` stand-ins first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    if sacct_states is not None:
        lines = "".join(f'echo "{job}|{state}|node1"\n' for job, state in sacct_states.items())
        (bin_dir / "sacct").write_text(f'#!/bin/sh\necho "JobID|State|NodeList"\n{lines}')
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def test_slurm_options_reach_the_batch_script_and_sacct_states_reach_status(tmp_path, monkeypatch, capsys):
    script = _fake_slurm(tmp_path, monkeypatch, {"4242_0": "RUNNING", "4242_1": "OUT_OF_MEMORY"})
    monkeypatch.setenv("ZSBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["run", "--datasets", "synthetic,world-colour", "--images", "8", *TINY, "--out", str(out)]
    argv += ["--data-root", str(tmp_path / "data"), "--launcher", "slurm", "--partition", "gpu-a100"]
    argv += ["--account", "proj_1", "--qos", "high", "--time-limit", "1-12:00:00", "--gpus-per-job", "4"]
    argv += ["--cpus-per-job", "32", "--mem-gb", "200", "--max-parallel", "1"]
    assert main(argv) == 0
    text = script.read_text()
    for line in (
        "--partition=gpu-a100",
        "--account=proj_1",
        "--qos=high",
        "--time=2160",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",  # one process per GPU, joined as torchrun would
        "--cpus-per-task=8",
        "--mem=200GB",
        "--array=0-1%1",
        "--job-name=zsbench-run",
    ):
        assert f"#SBATCH {line}\n" in text, line
    capsys.readouterr()
    assert main(["status", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| running " in printed and "failed (out_of_memory)" in printed and "log:" in printed


def test_without_sacct_status_says_the_states_are_last_reports(tmp_path, monkeypatch, capsys):
    _fake_slurm(tmp_path, monkeypatch)
    out = tmp_path / "out"
    argv = ["run", "--datasets", "synthetic", "--images", "8", *TINY, "--out", str(out), "--data-root"]
    argv += [str(tmp_path / "data"), "--launcher", "slurm", "--time-limit", "30"]
    assert main(argv) == 0
    monkeypatch.setenv("PATH", "/nonexistent")  # no sacct at all
    capsys.readouterr()
    assert main(["status", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| pending " in printed and "no sacct here" in printed


def test_slurm_on_a_machine_without_slurm_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    argv = ["run", "--datasets", "synthetic", "--images", "8", *TINY, "--out", str(tmp_path / "out")]
    argv += ["--data-root", str(tmp_path / "data"), "--launcher", "slurm", "--time-limit", "30"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--launcher local runs the same jobs here" in err


@pytest.mark.parametrize(
    "text,minutes",
    [("90", 90), ("90m", 90), ("4h", 240), ("2d", 2880), ("4:00:00", 240), ("0:00:30", 1), ("1-12:00:00", 2160)],
)
def test_time_limits(text, minutes):
    assert parse_time_limit(text) == minutes


@pytest.mark.parametrize("text", ["1:30", "", "abc", "0", "-5", "4:61:00", "1e3", "90s", "1.5h", "999999d", "4h "])
def test_ambiguous_or_bad_time_limits_are_refused(text):
    if text == "4h ":
        assert parse_time_limit(text) == 240  # surrounding spaces are not ambiguous
        return
    with pytest.raises(ZSBenchError, match="time-limit"):
        parse_time_limit(text)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--partition", "gpu"], "--partition needs --launcher"),
        (["--wait"], "--wait needs --launcher"),
        (["--launcher", "local", "--account", "a"], "--account is a Slurm option"),
        (["--launcher", "slurm"], "needs --time-limit"),
        (["--launcher", "slurm", "--time-limit", "1:30"], "ambiguous"),
        (["--launcher", "slurm", "--time-limit", "9", "--partition", "gpu\n#SBATCH --x"], "not a Slurm name"),
        (["--launcher", "slurm", "--time-limit", "9", "--account", "a;rm -rf /"], "not a Slurm name"),
        (["--launcher", "local", "--gpus-per-job", "-1"], "--gpus-per-job -1 must be at least 0"),
        (["--launcher", "local", "--methods", "nope"], "nope"),
        (["--launcher", "local", "--datasets", "cifar10"], "cifar10"),  # missing data: refused before submitting
        (["--launcher", "local", "--methods", "tecoa", "--no-train-missing"], "tecoa"),
    ],
)
def test_launcher_misuse_is_one_line_before_anything_is_submitted(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    argv = ["run", "--datasets", "synthetic", "--images", "8", *TINY, "--out", str(out)]
    argv += ["--data-root", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert not (out / "sweeps").exists()


def _sweep(folder: Path, jobs: list[dict], launcher: str = "local", **extra) -> Path:
    (folder / "state").mkdir(parents=True)
    manifest = {"format": SWEEP_FORMAT, "kind": "run", "created_utc": "x", "launcher": {"launcher": launcher}}
    manifest.update({"out_dir": str(folder.parent.parent), "jobs": jobs, **extra})
    (folder / "sweep.json").write_text(json.dumps(manifest))
    return folder


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_killed_local_job_shows_as_died(tmp_path):
    folder = _sweep(tmp_path / "out" / "sweeps" / "s", [{"job_id": "1", "unit": "a"}, {"job_id": "2", "unit": "b"}])
    state = {"state": "running", "pid": _dead_pid(), "host": socket.gethostname()}
    (folder / "state" / "0.json").write_text(json.dumps(state))
    (folder / "state" / "1.json").write_text(json.dumps({**state, "pid": os.getpid()}))
    assert [j.state for j in read_sweep(folder).jobs] == ["died", "running"]


def test_hostile_sweep_folders_are_shown_not_followed(tmp_path, capsys):
    out = tmp_path / "out"
    escape = ["../../../etc/passwd", "/etc/passwd", "records/../../x.json", 7, None]
    _sweep(out / "sweeps" / "a", [{"job_id": "1", "unit": "u"}, "not a dict", {"job_id": True}])
    (out / "sweeps" / "a" / "state" / "0.json").write_text(json.dumps({"state": "done", "written": escape}))
    (out / "sweeps" / "a" / "state" / "1.json").write_text("{torn")
    (out / "sweeps" / "a" / "state" / "2.json").write_text(json.dumps({"state": "running", "pid": "1; rm"}))
    (out / "sweeps" / "b").mkdir()
    (out / "sweeps" / "b" / "sweep.json").write_text("[]")
    _sweep(out / "sweeps" / "c", [], format=SWEEP_FORMAT + 1)
    (out / "sweeps" / "d").write_text("a file, not a sweep")
    a, b, c = read_sweeps(out)
    assert a.jobs[0].state == "done" and a.jobs[0].records == []  # nothing outside the results folder is named
    assert a.jobs[1].state == "died"  # a torn state file, no live process: gone
    assert a.jobs[2].state == "unknown" and "damaged" in a.jobs[2].note  # a pid that is no pid
    assert "unreadable" in b.problem and "another version" in c.problem
    assert main(["status", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sweep b: unreadable" in printed and "passwd" not in printed


def test_status_of_a_folder_without_sweeps(tmp_path, capsys):
    assert main(["status", "--out", str(tmp_path)]) == 0
    assert "no sweeps under" in capsys.readouterr().out
    assert main(["status", "--out", str(tmp_path / "missing")]) == 2


def test_a_failing_job_reports_its_error_line(tmp_path):
    from robustbench_zs.engine.runner import RunConfig
    from robustbench_zs.models import ModelSpec

    cfg = RunConfig(
        methods=("clip",),
        datasets=("cifar10",),  # not there: the job fails with the loader's line
        model=ModelSpec("zsbench-tiny", "random"),
        threats=(),
        data_root=tmp_path / "data",
        out_dir=tmp_path / "out",
        device="cpu",
    )
    folder = _sweep(tmp_path / "out" / "sweeps" / "s", [{"job_id": "1", "unit": "clip / cifar10"}])
    with pytest.raises(ZSBenchError):
        run_job("run", cfg, str(folder / "state" / "0.json"))
    (job,) = read_sweep(folder).jobs
    assert job.state == "failed" and "cifar10" in job.error and "\n" not in job.error
