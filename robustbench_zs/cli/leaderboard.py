"""``zsbench leaderboard``: rebuild leaderboard.md and leaderboard.csv from the records."""

from __future__ import annotations

import argparse

from ..report import write_leaderboard
from .args import results_with_records


def add_parser(sub) -> argparse.ArgumentParser:
    lb = sub.add_parser("leaderboard", help="rebuild leaderboard.md and leaderboard.csv from the records")
    lb.add_argument("--out", help="results folder (default $ZSBENCH_RESULTS or ./results)")
    lb.add_argument(
        "--mix-profiles",
        action="store_true",
        help="rank rows measured under different profile knobs in one table (each row names its profile)",
    )
    lb.add_argument(
        "--cost",
        action="store_true",
        help="add a Cost column: each row's GPU-hours (or CPU core-hours) summed over its records, with the hardware",
    )
    lb.set_defaults(handler=handle)
    return lb


def handle(args: argparse.Namespace) -> int:
    out = results_with_records(args.out)
    paths = write_leaderboard(out, mix_profiles=args.mix_profiles, cost=args.cost)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"leaderboard: {paths['markdown']} and {paths['csv']}")
    return 0
