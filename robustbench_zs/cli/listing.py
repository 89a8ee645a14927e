"""``zsbench list``: the registered methods, datasets or attacks."""

from __future__ import annotations

import argparse

from tabulate import tabulate

from ..attacks import ATTACKS
from ..datasets import DATASETS
from ..methods import METHODS


def add_parser(sub) -> argparse.ArgumentParser:
    ls = sub.add_parser("list", help="list the registered methods, datasets or attacks")
    ls.add_argument("what", choices=["methods", "datasets", "attacks"])
    ls.set_defaults(handler=handle)
    return ls


def handle(args: argparse.Namespace) -> int:

    if args.what == "methods":
        rows = [[k, m.summary, METHODS.origin(k)] for k, m in METHODS.items()]
    elif args.what == "datasets":
        rows = [[k, s.name, s.num_classes, s.eval_split, s.layout, DATASETS.origin(k)] for k, s in DATASETS.items()]
    else:
        rows = [["none", "no attack: clean accuracy only", "robustbench_zs"]]
        rows += [[k, a.description, ATTACKS.origin(k)] for k, a in ATTACKS.items()]
    headers = {
        "methods": ["method", "summary", "package"],
        "datasets": ["dataset", "name", "classes", "split", "layout under the data root", "package"],
        "attacks": ["attack", "description", "package"],
    }[args.what]
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    return 0
