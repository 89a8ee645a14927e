"""``zsbench status``: the sweeps under a results (or models) folder: each job's state, its records and their cost."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from ..errors import ZSBenchError
from ..launch import SweepStatus, read_sweeps
from ..provenance import default_results_dir
from ..results import RecordStore
from ..results.cost import format_cost, format_device_hours, read_cost, sum_costs


def add_parser(sub) -> argparse.ArgumentParser:
    st = sub.add_parser(
        "status",
        help="what the sweeps submitted with --launcher have done: jobs done, running, failed, and what they cost",
    )
    st.add_argument(
        "--out",
        help="results folder of zsbench run --launcher (default $ZSBENCH_RESULTS or ./results); for zsbench train "
        "--launcher, its --models-dir",
    )
    st.set_defaults(handler=handle)
    return st


def _records(out: Path, paths: list[str]) -> list:
    """The job's records that are there and valid (a record removed or damaged since is left out)."""
    found = []
    for rel in paths:
        try:
            found.append(RecordStore.read_path(out / rel))
        except (OSError, ValueError):
            continue
    return found


def _sweep_table(sweep: SweepStatus, out: Path) -> tuple[list[list], dict, list[dict], int]:
    """The sweep's rows, its jobs counted by state, the costs of the records its jobs wrote (a record a job reused
    was paid for before: it is not counted again) and how many written records hold no readable cost."""
    rows, counts, costs, uncosted = [], {}, [], 0
    for j in sweep.jobs:
        counts[j.state.split(" ")[0]] = counts.get(j.state.split(" ")[0], 0) + 1
        records = _records(out, j.records[: j.written])
        reused = len(_records(out, j.records[j.written :]))
        what = cost = ""
        if j.state == "done":
            what = f"{len(records) + reused} ({len(records)} written, {reused} reused)"
            mine = [c for c, _ in map(read_cost, records) if c is not None]
            uncosted += len(records) - len(mine)
            costs += mine
            cost = format_cost(sum_costs(mine), detail=False) if mine else ""
        state = j.state + (f": {j.error}" if j.error else "")
        if j.state.startswith(("failed", "died")) and j.log:
            state += f" (log: {sweep.folder / j.log})"
        rows.append([j.index, j.job_id or "-", j.unit, state, what, cost])
    return rows, counts, costs, uncosted


def handle(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_results_dir()
    if not out.is_dir():
        raise ZSBenchError(f"--out {out} is not a folder; give the results folder of zsbench run --launcher")
    sweeps = read_sweeps(out)
    if not sweeps:
        print(f"no sweeps under {out / 'sweeps'} (zsbench run --launcher slurm|local submits one)")
        return 0
    for sweep in sweeps:
        if sweep.problem:
            print(f"sweep {sweep.folder.name}: unreadable: {sweep.problem}\n")
            continue
        rows, counts, costs, uncosted = _sweep_table(sweep, out)
        tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        print(f"sweep {sweep.folder.name} ({sweep.kind}, {sweep.launcher}, submitted {sweep.created_utc}): {tally}")
        print(tabulate(rows, headers=["job", "id", "unit", "state", "records", "cost"], tablefmt="github"))
        total = sum_costs(costs)
        if total is not None:
            print(f"cost of the records written: {format_device_hours(total)} ({format_cost(total)})")
        if uncosted:
            print(f"note: {uncosted} written record(s) carry no readable cost block and are not counted")
        for note in sorted({j.note for j in sweep.jobs if j.note}):
            print(f"note: {note}")
        print()
    return 0
