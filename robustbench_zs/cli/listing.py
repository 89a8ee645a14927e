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
        rows = [[k, m.summary] for k, m in METHODS.items()]
    elif args.what == "datasets":
        rows = [[k, s.name, s.num_classes, s.eval_split, s.layout] for k, s in DATASETS.items()]
    else:
        rows = [["none", "no attack: clean accuracy only"], *[[k, a.description] for k, a in ATTACKS.items()]]
    headers = {
        "methods": ["method", "summary"],
        "datasets": ["dataset", "name", "classes", "split", "layout under the data root"],
        "attacks": ["attack", "description"],
    }[args.what]
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    return 0
