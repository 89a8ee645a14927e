"""``zsbench reproduce TARGET``: the subcommand (its parser and handler); the work is in :mod:`.reproduce`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tabulate import tabulate

from ..errors import ZSBenchError
from ..paper.estimate import dry_run_plan, dry_run_report
from ..paper.reproduce import reproduce
from ..paper.targets import get_target, targets
from ..paper.world import reproduce_world
from ..profiles import PROFILES, get_profile
from ..provenance import default_cache_dir, default_data_root, default_models_dir, default_results_dir
from .args import add_progress_flag, positive_int


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``reproduce`` to the ``zsbench`` subparsers ``sub``; its handler is set with ``set_defaults``."""

    rp = sub.add_parser(
        "reproduce",
        help="regenerate a table or figure of the PMG-AFT paper: our numbers beside the paper's, runs what is missing",
        description="Regenerate one of the PMG-AFT paper's tables (table1..table13) or figures (fig4, fig5) from the "
        "records, running (and training) what is missing first; writes <out>/reproduce/<target>-<profile>.md "
        "(with --paper-subsample <target>-<profile>-subsample.md; figures also .png and .csv of that name). "
        "'zsbench reproduce list' lists the targets.",
    )
    rp.add_argument(
        "target",
        help="table1 ... table13, fig4, fig5, 'world' (the paper in miniature on the world model, on a CPU), or 'list'",
    )
    rp.add_argument(
        "--profile",
        help=f"evaluation and training profile, one of {', '.join(PROFILES)} (default: paper for the paper's tables "
        "and figures, the official code's knobs; standard for the world target)",
    )
    rp.add_argument(
        "--dry-run",
        action="store_true",
        help="list the missing runs and trainings with a cost estimate (time and GPU-hours from the records of this "
        "machine's hardware where there are some, else time from any device's)",
    )
    rp.add_argument(
        "--json",
        action="store_true",
        help="with --dry-run: print the full plan as JSON, every training and evaluation knob of every run",
    )
    rp.add_argument(
        "--paper-subsample",
        action="store_true",
        help="evaluate only every 20th batch of 256 images, as the paper's validation loop did (recorded)",
    )
    rp.add_argument("--out", help="results folder (default $ZSBENCH_RESULTS or ./results)")
    rp.add_argument("--data-root", help="dataset root (default $ZSBENCH_DATA or ./datasets)")
    rp.add_argument("--models-dir", help="checkpoint root (default $ZSBENCH_MODELS or ./models)")
    rp.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    rp.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or 'random' (default openai)")
    rp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    rp.add_argument(
        "--batch-size",
        help="evaluation batch size (default 256, the official code's; fp16 attacks are keyed on it, since their "
        "results depend on it)",
    )
    rp.add_argument(
        "--n",
        "--images",
        dest="n",
        help="evaluate a seeded random subset of N images per dataset (default: the full split); under torchrun "
        "write --images N (torchrun's own parser takes --n for an abbreviation of its options)",
    )
    rp.add_argument(
        "--no-train", action="store_true", help="never train: rows without a checkpoint are skipped (shown missing)"
    )
    rp.add_argument(
        "--aa-n",
        help="world: images per task for AutoAttack, a seeded subset recorded in every record (default 16; 0: none)",
    )
    add_progress_flag(rp)
    rp.set_defaults(handler=_reproduce)
    return rp


def _reproduce_world(args: argparse.Namespace) -> int:

    profile = args.profile or "standard"
    get_profile(profile)
    for flag in ("dry_run", "paper_subsample", "no_train", "json"):
        if getattr(args, flag):
            raise ZSBenchError(f"--{flag.replace('_', '-')} does not apply to the world target; drop it")
    for flag, default in (("arch", "ViT-B-32"), ("pretrained", "openai")):
        if getattr(args, flag) != default:
            raise ZSBenchError(f"--{flag}: the world target always runs the world model (zsbench-world/world)")
    out = Path(args.out) if args.out else Path("results") / "world-reproduce"
    result = reproduce_world(
        out,
        profile=profile,
        device="cpu" if args.device == "auto" else args.device,
        batch_size=positive_int("batch-size", args.batch_size) or 256,
        aa_n=16 if args.aa_n is None else positive_int("aa-n", args.aa_n, minimum=0),
        n=positive_int("n", args.n) or 256,
        models_dir=Path(args.models_dir) if args.models_dir else None,
        cache_dir=default_cache_dir(),
        progress=args.progress,
    )
    print(result["markdown"].read_text(encoding="utf-8"), end="")
    print(f"written: {result['markdown']}, {result['leaderboard']['markdown']}", end="")
    print("".join(f", {result[k]['png']}" for k in ("fig4", "fig5") if k in result) + f", {result['comparison']}")
    return 0


def _list_targets() -> int:

    rows = [[t.id, t.kind, t.caption] for t in targets().values()]
    print(tabulate(rows, headers=["target", "kind", "caption"], tablefmt="simple"))
    return 0


def _reproduce(args: argparse.Namespace) -> int:

    if args.target == "list":
        return _list_targets()
    if args.target == "world":
        return _reproduce_world(args)
    args.profile = args.profile or "paper"
    get_target(args.target)  # unknown targets and profiles fail first, in one line
    get_profile(args.profile)
    n = positive_int("n", args.n)
    if args.paper_subsample and n is not None:
        raise ZSBenchError("--paper-subsample and --n both choose the images; drop one of them")
    batch_size = positive_int("batch-size", args.batch_size) or 256
    if args.json and not args.dry_run:
        raise ZSBenchError("--json prints the plan of a dry run; add --dry-run")
    out = Path(args.out) if args.out else default_results_dir()
    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    common = dict(arch=args.arch, pretrained=args.pretrained, n=n, paper_subsample=args.paper_subsample)
    if args.dry_run:
        if args.json:
            doc = dry_run_plan(args.target, out, args.profile, models_dir=models_dir, batch_size=batch_size, **common)
            print(json.dumps(doc, indent=1, ensure_ascii=False))
            return 0
        text = dry_run_report(
            args.target, out, args.profile, models_dir=models_dir, batch_size=batch_size, device=args.device, **common
        )
        print(text, end="")
        return 0
    result = reproduce(
        args.target,
        profile=args.profile,
        out_dir=out,
        data_root=Path(args.data_root) if args.data_root else default_data_root(),
        models_dir=models_dir,
        device=args.device,
        batch_size=batch_size,
        train=not args.no_train,
        progress=args.progress,
        cache_dir=default_cache_dir(),
        **common,
    )
    print(result.text, end="")
    print(f"written: {result.markdown} ({result.written} new records)")
    return 0
