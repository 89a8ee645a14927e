"""``zsbench compare A B``: McNemar-test two methods record by record on the same images (the statistics are in
:mod:`robustbench_zs.report.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import replacing
from ..errors import ZSBenchError
from ..report.compare import compare, comparison_frame, render
from ..report.leaderboard import records_frame
from .args import results_with_records


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``zsbench compare`` on the CLI's subparsers."""
    cp = sub.add_parser(
        "compare",
        help="McNemar-test two methods record by record on the same images (Holm-corrected)",
        description="Pair every record of A with the record of B on the same images, threat and protocol, and test "
        "the difference with McNemar's test; significance is Holm-Bonferroni corrected over all pairs.",
    )
    cp.add_argument("a", metavar="A", help="method label, method id, or 'label · model' as on the leaderboard")
    cp.add_argument("b", metavar="B", help="the other method, named the same way")
    cp.add_argument("--out", help="results folder (default $ZSBENCH_RESULTS or ./results)")
    cp.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (default 0.05)")
    cp.add_argument("--csv", help="also write the pairs and the unpaired records to this CSV file")
    cp.set_defaults(handler=handle)
    return cp


def handle(args: argparse.Namespace) -> int:
    out = results_with_records(args.out)
    comp = compare(records_frame(out), args.a, args.b, alpha=args.alpha)
    print(render(comp))
    if args.csv:
        path = Path(args.csv)
        with replacing(path, instead="--csv") as tmp:
            comparison_frame(comp).to_csv(tmp, index=False)
        print(f"\ncsv: {path}")
    if comp.pairs.empty:
        raise ZSBenchError(f"nothing compared: {args.a!r} and {args.b!r} share no images, threat and protocol")
    return 0
