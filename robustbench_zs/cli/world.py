"""``zsbench world pretrain``: rebuild the shipped world CLIP, bit for bit (its parser and handler)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import ZSBenchError
from ..provenance import cpu_model
from ..train.world_pretrain import PretrainConfig, pretrain, save_weights
from ..world import WORLD_WEIGHTS


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``world`` to the ``zsbench`` subparsers ``sub``; its handler is set with ``set_defaults``."""

    d = PretrainConfig()
    wp = sub.add_parser(
        "world",
        help="the procedural world and its tiny CLIP: pre-train the shipped model again",
        description="The world model (--arch zsbench-world --pretrained world) ships with the package; "
        "'zsbench world pretrain' trains it again from scratch with the same recipe and checks the result.",
    )
    wsub = wp.add_subparsers(dest="action", required=True, parser_class=type(wp))
    pt = wsub.add_parser(
        "pretrain",
        help="contrastive pre-training from scratch on generated image-caption pairs (deterministic on one thread)",
        description="Trains the world CLIP from scratch on freshly generated scenes and captions and writes its "
        "weights as safetensors; with the defaults, on one thread, it repeats itself bit for bit, and equals the "
        "shipped file bit for bit where torch and MKL take the floating-point code paths that made it (--check says "
        "how far apart the two are otherwise).",
    )
    pt.add_argument("--out", required=True, help="the safetensors file to write")
    pt.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    pt.add_argument("--batch-size", type=int, default=d.batch_size, help=f"pairs per step (default {d.batch_size})")
    pt.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    pt.add_argument("--warmup", type=int, default=d.warmup, help=f"warm-up steps (default {d.warmup})")
    pt.add_argument("--seed", type=int, default=d.seed, help=f"initialization and data seed (default {d.seed})")
    pt.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the shipped weights were made on one)"
    )
    pt.add_argument(
        "--check",
        action="store_true",
        help="compare the result's sha256 with the shipped weights' and exit 1 when they differ",
    )
    wp.set_defaults(handler=_world)
    return wp


def _world(args: argparse.Namespace) -> int:

    for flag, least in (("steps", 1), ("batch_size", 2), ("warmup", 0), ("threads", 1)):
        if getattr(args, flag) < least:
            raise ZSBenchError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least {least}")
    if args.seed < 0:
        raise ZSBenchError(f"--seed {args.seed} must be at least 0")
    if args.batch_size % 2:
        raise ZSBenchError(f"--batch-size {args.batch_size} must be even (scenes come in minimal pairs)")
    if not args.lr > 0 or args.lr == float("inf"):
        raise ZSBenchError(f"--lr {args.lr} must be a positive finite number")
    out = Path(args.out)
    if out.is_dir():
        raise ZSBenchError(f"--out {out} is a folder; give a file name such as {out / 'zsbench-world.safetensors'}")
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, seed=args.seed)
    if args.check and (cfg != PretrainConfig() or args.threads != 1):
        changed = [f"--{k.replace('_', '-')}" for k, v in cfg.to_dict().items() if v != PretrainConfig().to_dict()[k]]
        changed += ["--threads"] if args.threads != 1 else []
        raise ZSBenchError(
            f"--check compares with the shipped weights, made with the defaults on one thread; drop {', '.join(changed)}"
        )
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = pretrain(cfg)
    seconds = time.perf_counter() - t0
    sha = save_weights(model, cfg, out)
    print(json.dumps({"out": str(out), "sha256": sha, "seconds": round(seconds, 1), "threads": args.threads,
                      "config": cfg.to_dict()}))  # fmt: skip
    if args.check:
        if sha != WORLD_WEIGHTS.sha256:
            rel, worst = weights_distance(out, WORLD_WEIGHTS.path)
            print(
                f"differs from the shipped weights (sha256 {WORLD_WEIGHTS.sha256}): relative L2 distance {rel:.2%}, "
                f"largest difference {worst:.2g}. Bit equality needs the floating-point kernels that made the shipped "
                f"file: torch and MKL take other code paths on other CPU models ({cpu_model()} here), and 3,000 steps "
                f"grow their rounding differences (another CPU model gave 0.37% and the same world accuracies within "
                f"0.1 point); a distance of several percent means another recipe or code"
            )
            return 1
        print("identical to the shipped weights")
    return 0


def weights_distance(a: Path, b: Path) -> tuple[float, float]:
    """How far two weight files of the world CLIP lie apart: ||a - b|| / ||b|| over every tensor, and max |a - b|
    (inf where their tensors differ in names or shapes)."""
    wa, wb = load_file(str(a)), load_file(str(b))
    if wa.keys() != wb.keys() or any(wa[k].shape != wb[k].shape for k in wb):
        return float("inf"), float("inf")
    num = sum(float(((wa[k].double() - wb[k].double()) ** 2).sum()) for k in wb)
    den = sum(float((wb[k].double() ** 2).sum()) for k in wb)
    worst = max((float((wa[k].double() - wb[k].double()).abs().max()) for k in wb if wb[k].numel()), default=0.0)
    return (num / den) ** 0.5 if den else float("inf"), worst
