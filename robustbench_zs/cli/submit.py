"""``zsbench submit``: package one method's records under one protocol for review (:mod:`robustbench_zs.submit`)."""

from __future__ import annotations

import argparse
import json

from ..errors import ZSBenchError
from ..provenance import default_results_dir
from ..submit.package import CARD_TEMPLATE, SCHEMA_PATH, load_card, submit


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Declare ``zsbench submit`` on the CLI's subparsers."""
    sp = sub.add_parser(
        "submit",
        help="package a method's records under one protocol (gold, fast or world), with its card and checkpoint",
        description="Collect the records of one method (one set of weights) that fill every (dataset, threat) cell "
        "of a protocol, check them (one tier, one profile, the checkpoint's sha256, sanity checks explained), and "
        "write a submission directory (submission.json, following robustbench_zs/submit/submission.schema.json, and "
        "the records) that a maintainer reviews and merges; `zsbench site --submissions` builds the site from them.",
    )
    sp.add_argument("--method", help="the method's registry name or its label with options, as on the leaderboard")
    sp.add_argument("--protocol", choices=("gold", "fast", "world"), help="the protocol the records fill")
    sp.add_argument("--card", help="the method card, a JSON file (start from `zsbench submit --card-template`)")
    sp.add_argument(
        "--results",
        action="append",
        help="results folder holding the records (repeatable; default $ZSBENCH_RESULTS or ./results)",
    )
    sp.add_argument("--checkpoint", help="the evaluated checkpoint (file or our folder): its sha256 is computed here")
    sp.add_argument("--checkpoint-sha256", help="instead of --checkpoint: the checkpoint's sha256 (e.g. sha256sum)")
    sp.add_argument("--checkpoint-url", help="where reviewers download the checkpoint (https://..., hf-hub:OWNER/NAME)")
    sp.add_argument("--explain", help="why the numbers stand although a sanity check failed (shown beside them)")
    sp.add_argument("--out", default="submissions", help="folder to write the submission into (default ./submissions)")
    sp.add_argument("--archive", action="store_true", help="also write <id>.tar.gz of the submission directory")
    sp.add_argument("--force", action="store_true", help="replace an existing submission directory of the same id")
    sp.add_argument("--card-template", action="store_true", help="print a method card to fill in, and exit")
    sp.add_argument("--schema", action="store_true", help="print the submission JSON Schema's path, and exit")
    sp.set_defaults(handler=handle)
    return sp


def handle(args: argparse.Namespace) -> int:
    if args.card_template:
        print(json.dumps(CARD_TEMPLATE, indent=2))
        return 0
    if args.schema:
        print(SCHEMA_PATH)
        return 0
    missing = [f"--{k}" for k in ("method", "protocol", "card") if not getattr(args, k)]
    if missing:
        raise ZSBenchError(
            f"zsbench submit needs {', '.join(missing)} (e.g. zsbench submit --method tecoa --protocol world "
            "--card card.json; `zsbench submit --card-template` prints a card)"
        )
    card = load_card(args.card)
    done = submit(
        results=args.results or [default_results_dir()],
        method=args.method,
        protocol=args.protocol,
        card=card,
        out=args.out,
        checkpoint=args.checkpoint,
        checkpoint_sha256=args.checkpoint_sha256,
        checkpoint_url=args.checkpoint_url,
        explanation=args.explain,
        archive=args.archive,
        force=args.force,
    )
    sel, sub = done.selection, done.submission
    print(
        f"submission {sub['submission_id']}: {len(sub['records'])} records of {args.method!r} under the {args.protocol} protocol"
    )
    if sel.companions:
        print(f"  with {len(sel.companions)} non-adaptive records of the same cells (shown flagged, not ranked)")
    if sel.superseded:
        print(
            f"  {len(sel.superseded)} older records of the same cells replaced by newer ones (as the leaderboard does)"
        )
    if sel.left_out:
        per: dict[str, int] = {}
        for r in sel.left_out:
            per[r.dataset["id"]] = per.get(r.dataset["id"], 0) + 1
        shown = "; ".join(f"{d}: {k}" for d, k in sorted(per.items())[:4]) + ("; ..." if len(per) > 4 else "")
        print(f"  left out {len(sel.left_out)} records of datasets or threats outside the protocol ({shown})")
    if sub["sanity"]["failed"]:
        print(f"  {len(sub['sanity']['failed'])} failed sanity checks, explained: {sub['sanity']['explanation']}")
    print(f"written: {done.folder}")
    if done.archive:
        print(f"archive: {done.archive}")
    print("next: send the directory (or archive) for review; `zsbench site --submissions DIR --out SITE` shows it")
    return 0
