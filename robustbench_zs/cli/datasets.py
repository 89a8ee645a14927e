"""``zsbench datasets check|download``: what is under a data root, and how to get the rest."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from ..datasets import DATASETS, DatasetNotFoundError
from ..errors import ZSBenchError
from ..provenance import default_data_root
from .args import Parser, split_list


def add_parser(sub) -> argparse.ArgumentParser:
    ds = sub.add_parser("datasets", help="inspect the datasets under a data root")
    ds_sub = ds.add_subparsers(dest="action", required=True, parser_class=Parser)
    chk = ds_sub.add_parser("check", help="which datasets are found, missing or broken, and what to do")
    chk.add_argument("--data-root", help="dataset root (default $ZSBENCH_DATA or ./datasets)")
    dl = ds_sub.add_parser(
        "download", help="fetch datasets with torchvision's downloader, or print the exact manual steps"
    )
    dl.add_argument("names", help="comma-separated dataset ids (see zsbench list datasets)")
    dl.add_argument("--data-root", help="dataset root (default $ZSBENCH_DATA or ./datasets)")
    ds.set_defaults(handler=handle)
    return ds


def handle(args: argparse.Namespace) -> int:

    root = Path(args.data_root) if args.data_root else default_data_root()
    if args.action == "download":
        return _download(root, split_list(args.names, "names"))
    rows = []
    for ds_id, spec in DATASETS.items():
        try:
            data = spec.loader(root, spec.eval_split)
            rows.append([ds_id, "found", len(data), len(data.classnames), "-"])
        except DatasetNotFoundError as e:
            if spec.folder and not (root / spec.folder).exists():
                rows.append([ds_id, "missing", "", spec.num_classes, f"zsbench datasets download {ds_id}"])
            else:
                rows.append([ds_id, "wrong layout", "", spec.num_classes, str(e)])
        except ZSBenchError as e:
            rows.append([ds_id, "broken", "", spec.num_classes, str(e)])
    print(f"data root: {root.resolve()}")
    print(tabulate(rows, headers=["dataset", "status", "images", "classes", "what to do"], tablefmt="simple"))
    return 0


def _download(root: Path, names: list[str]) -> int:

    specs = [DATASETS.get(n) for n in names]  # unknown names fail before anything is fetched
    for spec in specs:
        if not spec.needs_root:
            print(f"{spec.id}: generated in memory; nothing to download")
        elif spec.download is None:
            steps = (spec.manual_steps or "").replace("<data-root>", str(root))
            print(
                f"{spec.id}: no automatic download; get it by hand:\n  {steps}\nthen check with: zsbench datasets check --data-root {root}"
            )
        else:
            print(f"{spec.id}: downloading with torchvision into {root} ...", flush=True)
            spec.download(root)
            data = spec.loader(root, spec.eval_split)
            print(
                f"{spec.id}: ready ({len(data)} images in the {spec.eval_split} split, {len(data.classnames)} classes)"
            )
    return 0
