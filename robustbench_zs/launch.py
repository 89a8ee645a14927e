"""Sweeps on a cluster through submitit: ``zsbench run|train ... --launcher slurm`` (or ``local``).

A sweep is cut into jobs along the units the engine already has: one job per (method, dataset), each running the
ordinary :func:`robustbench_zs.engine.runner.run` on its part of the plan and writing its records into the shared
results folder under the same record locks as any other run, so a sweep writes exactly the records one ``zsbench
run`` writes (a record two jobs would both owe, such as a clean pass, is computed once and reused). A method whose
checkpoint must first be trained is one job for all its datasets, so two jobs never train the same checkpoint.
A job with several GPUs runs its processes as a torchrun job would (sharded evaluation, DDP training).

Nothing here schedules: submitit submits (Slurm job arrays through ``sbatch``, or local processes with its local
executor, which the tests use). Each sweep keeps its files under ``<out>/sweeps/<name>/``: ``sweep.json`` (the
command, the options and per job its id and unit), ``state/<job>.json`` (what the job reported: running, done with
its records, failed with its error line) and submitit's ``logs/``. ``zsbench status`` reads them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from .distributed import is_main_process
from .engine import runner
from .engine.variants import resolve_variants
from .errors import ZSBenchError
from .results.store import _pid_alive, atomic_write_json
from .train import train

LAUNCHERS = ("slurm", "local")
#: ``sweep.json``'s format; a newer one is refused by ``zsbench status`` rather than misread
SWEEP_FORMAT = 1
_TIME_FORMS = "a number of minutes (90), 90m, 4h, 2d, H:MM:SS (4:00:00) or D-HH:MM:SS (1-12:00:00)"


def parse_time_limit(text: str) -> int:
    """``--time-limit`` in minutes. ``A:B`` alone is refused: Slurm reads it as minutes:seconds, people as hours."""
    t = str(text).strip().lower()
    m = re.fullmatch(r"(\d+)\s*([mhd]?)", t)
    if m:
        minutes = int(m.group(1)) * {"": 1, "m": 1, "h": 60, "d": 1440}[m.group(2)]
    else:
        m = re.fullmatch(r"(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)", t)
        if not m:
            hint = " (ambiguous: write 1:30:00 for an hour and a half, or 90 for 90 minutes)" if ":" in t else ""
            raise ZSBenchError(f"--time-limit {text!r} is not a duration{hint}; use {_TIME_FORMS}")
        days, hours, mins, secs = (int(g or 0) for g in m.groups())
        minutes = days * 1440 + hours * 60 + mins + (1 if secs else 0)
    if minutes < 1 or minutes > 366 * 1440:
        raise ZSBenchError(f"--time-limit {text!r} must lie between 1 minute and a year; use {_TIME_FORMS}")
    return minutes


@dataclass(frozen=True)
class LaunchOptions:
    """Where and how the jobs of a sweep run (``--launcher`` and its options)."""

    launcher: str
    time_limit_min: int
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    max_parallel: int | None = None  # at most this many jobs of the array at once (Slurm's %N)
    wait: bool = False

    @property
    def tasks_per_job(self) -> int:
        """Processes per job: one per GPU (a torchrun job's layout), one on the CPU."""
        return max(1, self.gpus_per_job)

    def executor_parameters(self) -> dict:
        params: dict = {"timeout_min": self.time_limit_min, "tasks_per_node": self.tasks_per_job, "nodes": 1}
        params["gpus_per_node"] = self.gpus_per_job
        if self.cpus_per_job is not None:
            params["cpus_per_task"] = max(1, self.cpus_per_job // self.tasks_per_job)
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        slurm = {"partition": self.partition, "account": self.account, "qos": self.qos}
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
        if self.max_parallel is not None:
            params["slurm_array_parallelism"] = self.max_parallel
        return params

    def describe(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class JobSpec:
    """One job of a sweep: what it runs (``kind`` run or train, and its config) and, for the status, its unit."""

    kind: str
    config: object  # RunConfig or TrainConfig
    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    trains: tuple[str, ...] = ()  # methods whose checkpoint the job trains before evaluating

    def unit(self) -> str:
        if self.kind == "train":
            return f"train {self.methods[0]} on {self.datasets[0]}"
        what = f"{','.join(self.methods)} / {','.join(self.datasets)}"
        return what + (f" (trains {','.join(self.trains)} first)" if self.trains else "")


class _WouldTrain(Exception):
    pass


def _would_train(method_id: str, options: dict, recipe: dict) -> Path:
    raise _WouldTrain(method_id)


def plan_run_jobs(cfg, echo: Callable[[str], None] = print) -> list[JobSpec]:
    """The jobs of ``zsbench run --launcher``: one per (method, dataset); a method whose checkpoint is missing (and
    would be trained, ``--train-missing``) is one job over all its datasets. Bad input (an unknown method, a
    checkpoint that does not fit, ``--no-train-missing`` without a checkpoint) is refused here, before anything is
    submitted."""
    jobs = []
    for method in cfg.methods:
        options = {method: cfg.method_options[method]} if method in cfg.method_options else {}
        checkpoints = {method: cfg.checkpoints[method]} if method in cfg.checkpoints else {}
        try:
            resolve_variants(
                (method,),
                cfg.model,
                options,
                checkpoints,
                cfg.models_dir,
                _would_train if cfg.train_missing else None,
                echo=lambda _: None,
                train_dataset=cfg.train_dataset,
                train_profile=cfg.train_profile,
            )
            trains = False
        except _WouldTrain:
            trains = True
        part = replace(cfg, methods=(method,), method_options=options, checkpoints=checkpoints)
        if trains:
            jobs.append(JobSpec("run", part, (method,), tuple(cfg.datasets), (method,)))
            echo(
                f"note: {method} has no checkpoint yet: one job trains it, then evaluates its {len(cfg.datasets)} "
                f"datasets (zsbench train --launcher first spreads its evaluation over one job per dataset)"
            )
            continue
        for ds in cfg.datasets:
            jobs.append(JobSpec("run", replace(part, datasets=(ds,)), (method,), (ds,)))
    return jobs


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return line if isinstance(error, ZSBenchError) else f"{type(error).__name__}: {line}".rstrip(": ")


def _join_job_processes() -> None:
    """In a job of several tasks (one per GPU), export what torch.distributed reads (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT), so the engine runs as under torchrun."""
    import submitit  # an optional dependency (the cluster extra): only where a sweep is launched or run

    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (called directly): one process
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def run_job(kind: str, config, state_path: str) -> dict:
    """The function every job runs (pickled by submitit): the engine on the job's part of the sweep. Process 0
    reports to ``state_path``: running (with its pid and host), then done with the records written and reused (or
    the checkpoint trained), or failed with the error's line."""
    _join_job_processes()
    main = is_main_process()
    started = _now()
    base = {"kind": kind, "pid": os.getpid(), "host": socket.gethostname(), "started_utc": started}
    if main:
        atomic_write_json(Path(state_path), {**base, "state": "running"})
    try:
        if kind == "run":
            summary = runner.run(config)
            out = Path(config.out_dir)
            payload = {
                "written": [str(p.relative_to(out)) for p in summary.written],
                "reused": [str(p.relative_to(out)) for p in summary.skipped],
                "undefined": len(summary.skipped_undefined),
            }
        else:
            payload = {"checkpoint": str(train(config).folder)}
    except BaseException as e:
        if main:
            atomic_write_json(Path(state_path), {**base, "state": "failed", "error": _one_line(e), "ended_utc": _now()})
        raise
    if main:
        atomic_write_json(Path(state_path), {**base, "state": "done", **payload, "ended_utc": _now()})
    return payload


def _executor(opts: LaunchOptions, logs: Path):
    try:
        import submitit  # an optional dependency (the cluster extra): only where a sweep is launched or run
    except ImportError:
        raise ZSBenchError(
            "--launcher needs submitit, which is not installed: pip install 'robustbench_zs[cluster]'"
        ) from None
    try:
        executor = submitit.AutoExecutor(folder=logs / "%j", cluster="local" if opts.launcher == "local" else "slurm")
    except RuntimeError as e:  # no srun/sbatch on this machine
        raise ZSBenchError(
            f"--launcher {opts.launcher}: {_one_line(e)}; on a machine without Slurm, --launcher local runs the "
            "same jobs here"
        ) from None
    executor.update_parameters(**opts.executor_parameters())
    return executor


def sweep_name(kind: str) -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{kind}-{os.getpid()}"


def submit(jobs: list[JobSpec], opts: LaunchOptions, out_dir: Path, argv: list[str]) -> tuple[Path, list]:
    """Submit ``jobs`` (a Slurm job array, or local processes) and write the sweep's ``sweep.json``; returns the
    sweep's folder and submitit's job handles."""
    if not jobs:
        raise ZSBenchError("nothing to submit")
    kind = jobs[0].kind
    folder = Path(out_dir) / "sweeps" / sweep_name(kind)
    (folder / "state").mkdir(parents=True, exist_ok=True)
    executor = _executor(opts, folder / "logs")
    executor.update_parameters(name=f"zsbench-{kind}")
    manifest = {
        "format": SWEEP_FORMAT,
        "kind": kind,
        "created_utc": _now(),
        "command": ["zsbench", *argv],
        "out_dir": str(Path(out_dir).resolve()),
        "launcher": opts.describe(),
        "jobs": [
            {"index": i, "job_id": None, "unit": j.unit(), "methods": list(j.methods), "datasets": list(j.datasets)}
            for i, j in enumerate(jobs)
        ],
    }
    atomic_write_json(folder / "sweep.json", manifest)  # the plan first: a kill during submission leaves it
    handles = []
    try:
        with executor.batch():
            for i, j in enumerate(jobs):
                handles.append(executor.submit(run_job, j.kind, j.config, str(folder / "state" / f"{i}.json")))
    except (OSError, RuntimeError, FileNotFoundError) as e:  # no sbatch here, or Slurm refused the array
        raise ZSBenchError(
            f"--launcher {opts.launcher}: submission failed: {_one_line(e)}; on a machine without Slurm, "
            "--launcher local runs the same jobs here"
        ) from None
    for entry, h in zip(manifest["jobs"], handles, strict=True):
        entry["job_id"] = str(h.job_id)
        entry["stdout"] = os.path.relpath(h.paths.stdout, folder)
        entry["stderr"] = os.path.relpath(h.paths.stderr, folder)
    atomic_write_json(folder / "sweep.json", manifest)
    return folder, handles


def wait(handles: list) -> None:
    """Block until every job has ended (its outcome is in its state file; ``zsbench status`` reads it)."""
    for h in handles:
        with contextlib.suppress(Exception):  # the job's own failure is in its state file
            h.wait()


# -- zsbench status ---------------------------------------------------------------------------------------------------

#: Slurm's job states (sacct, as submitit reports them) and what the status calls them
_SLURM_STATES = {
    "PENDING": "pending",
    "REQUEUED": "pending",
    "CONFIGURING": "pending",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SUSPENDED": "running",
}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _alive_here(pid) -> bool | None:
    """Whether process ``pid`` of this machine runs (None: not a pid)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    return _pid_alive(pid)


def _scheduler_state(launcher: str, folder: Path, job_id: str | None, state: dict | None) -> tuple[str, str | None]:
    """The state of a job that has not reported an end: asked of Slurm (sacct through submitit), or, for a local
    job, whether its process (or, before it started, submitit's controller) still runs on this machine. Returns the
    state and, when the scheduler could not be asked, why (the state is then the job's last report)."""
    if launcher == "local":
        here = socket.gethostname()
        if state is not None:
            if not isinstance(state.get("host"), str) or _alive_here(state.get("pid")) is None:
                return "unknown", "a job's state file is damaged (no host or pid): see its log"
            if state.get("host") != here:
                return "running", f"a local job of {state.get('host')}: its process cannot be checked from here"
            return ("running" if _alive_here(state.get("pid")) else "died"), None
        pid = int(job_id) if job_id and job_id.isdigit() else None
        return ("pending" if _alive_here(pid) else "died"), None
    if not job_id:
        return "not submitted", None
    last = "running" if state is not None else "pending"
    if shutil.which("sacct") is None:
        return last, "no sacct here to ask Slurm: states are the jobs' last reports"
    try:
        import submitit  # an optional dependency (the cluster extra): only where a sweep is launched or run

        logging.getLogger("submitit").setLevel(logging.ERROR)  # its sacct warnings are said once, below
        raw = str(submitit.SlurmJob(folder=folder / "logs" / "%j", job_id=job_id).state).upper()
    except Exception as e:  # noqa: BLE001 - sacct failed: say what the job last reported
        return last, f"sacct failed ({_one_line(e)}): states are the jobs' last reports"
    if raw in _SLURM_STATES:
        return _SLURM_STATES[raw], None
    if raw.startswith("UNKNOWN"):
        return last, "Slurm does not know the job (yet): its state is its last report"
    return f"failed ({raw.lower()})", None


@dataclass
class JobStatus:
    index: int
    job_id: str | None
    unit: str
    state: str
    records: list[str]  # record paths relative to the results folder (written, then reused)
    written: int
    error: str | None = None
    log: str | None = None
    note: str | None = None  # why the state is the job's last report rather than the scheduler's word


@dataclass
class SweepStatus:
    folder: Path
    kind: str
    created_utc: str
    launcher: str
    jobs: list[JobStatus]
    problem: str | None = None  # why the sweep could not be read (its folder is listed with it)


def _safe_relative(value, root: Path) -> str | None:
    """A path a state file names, only when it stays inside ``root`` (a hostile file cannot point elsewhere)."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return None
    p = (root / value).resolve()
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return None


def read_sweep(folder: Path) -> SweepStatus:
    """One sweep's jobs with their states, read from its ``sweep.json`` and its jobs' state files."""
    manifest = _read_json(folder / "sweep.json")
    if manifest is None or not isinstance(manifest.get("jobs"), list):
        return SweepStatus(folder, "?", "?", "?", [], problem="sweep.json is missing or unreadable")
    if manifest.get("format") != SWEEP_FORMAT:
        return SweepStatus(
            folder,
            "?",
            "?",
            "?",
            [],
            problem=f"sweep.json format {manifest.get('format')!r} is "
            f"not {SWEEP_FORMAT}: written by another version of robustbench_zs",
        )
    launcher = (manifest.get("launcher") or {}).get("launcher")
    launcher = launcher if launcher in LAUNCHERS else "?"
    out = folder.parent.parent  # the results folder the sweep lies in (<out>/sweeps/<name>), not what it claims
    jobs = []
    for i, entry in enumerate(manifest["jobs"]):
        entry = entry if isinstance(entry, dict) else {}
        job_id = entry.get("job_id")
        job_id = str(job_id) if isinstance(job_id, (str, int)) and not isinstance(job_id, bool) else None
        state = _read_json(folder / "state" / f"{i}.json")
        reported = state.get("state") if state else None
        records: list[str] = []
        written = 0
        error = note = None
        if reported == "done":
            written_list = [r for r in (state.get("written") or []) if _safe_relative(r, out)]
            reused = [r for r in (state.get("reused") or []) if _safe_relative(r, out)]
            records, written = written_list + reused, len(written_list)
            where = "done"
        elif reported == "failed":
            where, error = "failed", str(state.get("error") or "")[:500]
        else:
            where, note = _scheduler_state(launcher, folder, job_id, state if reported == "running" else None)
        log = _safe_relative(entry.get("stderr"), folder)
        jobs.append(JobStatus(i, job_id, str(entry.get("unit", "?")), where, records, written, error, log, note))
    return SweepStatus(folder, str(manifest.get("kind", "?")), str(manifest.get("created_utc", "?")), launcher, jobs)


def read_sweeps(out_dir: Path) -> list[SweepStatus]:
    """Every sweep under ``<out_dir>/sweeps``, oldest first."""
    root = Path(out_dir) / "sweeps"
    if not root.is_dir():
        return []
    return [read_sweep(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.is_symlink()]
