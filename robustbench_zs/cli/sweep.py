"""What ``run`` and ``train`` do with ``--launcher``: submit the jobs, say where they are, and with ``--wait`` wait
for them and report (``zsbench status`` reports at any time)."""

from __future__ import annotations

from pathlib import Path

from ..launch import JobSpec, LaunchOptions, read_sweep, submit, wait
from ..report import write_leaderboard


def submit_and_report(jobs: list[JobSpec], opts: LaunchOptions, out: Path, argv: list[str], leaderboard: bool) -> int:
    folder, handles = submit(jobs, opts, out, argv)
    ids = ", ".join(str(h.job_id) for h in handles)
    print(f"submitted {len(handles)} {opts.launcher} job(s) ({ids}); sweep folder {folder}")
    for i, j in enumerate(jobs):
        print(f"  job {i}: {j.unit()}")
    if not opts.wait:
        print(f"follow them with: zsbench status --out {out}")
        return 0
    wait(handles)
    sweep = read_sweep(folder)
    failed = [j for j in sweep.jobs if j.state != "done"]
    if leaderboard and (Path(out) / "records").is_dir():
        paths = write_leaderboard(Path(out))
        print(f"leaderboard: {paths['markdown']} and {paths['csv']}")
    for j in failed:
        print(f"job {j.index} ({j.unit}): {j.state}" + (f": {j.error}" if j.error else ""))
    print(f"{len(sweep.jobs) - len(failed)} of {len(sweep.jobs)} jobs done; zsbench status --out {out} shows them")
    return 1 if failed else 0
