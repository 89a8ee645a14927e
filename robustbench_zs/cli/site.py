"""``zsbench site``: build the static leaderboard website (:mod:`robustbench_zs.site`)."""

from __future__ import annotations

import argparse

from ..site import build_site


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``zsbench site`` on the CLI's subparsers."""
    sp = sub.add_parser(
        "site",
        help="build the static leaderboard website from accepted submissions and local records",
        description="Write a static website (HTML, CSS, a little JavaScript; no server needed, it opens from the "
        "file system): per protocol and radius a sortable main table, per-dataset tables whose numbers link to their "
        "records, plots, a page per method with its card, and the published numbers apart.",
    )
    sp.add_argument("--out", required=True, help="folder to write the site to (replaced whole if it is a built site)")
    sp.add_argument(
        "--submissions",
        action="append",
        default=[],
        help="folder of accepted submissions (the directories zsbench submit writes); repeatable",
    )
    sp.add_argument(
        "--results", action="append", default=[], help="results folder whose records are shown too; repeatable"
    )
    sp.add_argument("--no-published", action="store_true", help="leave the published (not re-evaluated) numbers out")
    sp.set_defaults(handler=handle)
    return sp


def handle(args: argparse.Namespace) -> int:
    done = build_site(args.out, args.submissions, args.results, include_published=not args.no_published)
    print(
        f"site: {done['entries']} models under {', '.join(done['protocols'])} from {done['records']} records; "
        f"open {done['out'] / 'index.html'}"
    )
    for label, per in done["left_out"].items():
        where = ", ".join(f"{n} on {d}" for d, n in sorted(per.items()))
        print(f"  not shown: {sum(per.values())} records of {label} fit no protocol ({where})")
    return 0
