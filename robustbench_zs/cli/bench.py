"""The ``zsbench bench`` subcommand."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench.runner import BenchConfig, resolve_device, run_bench
from .args import positive_int

#: The options of ``zsbench bench`` in the order the recorded command line lists them.
_OPTIONS = (
    "method", "arch", "pretrained", "batch_size", "eval_batch_size", "device", "steps", "warmup", "naive_steps",
    "no_naive", "precision", "compile", "threads", "joint_forward", "peak_size", "defense", "eot_samples", "seed",
    "out",
)  # fmt: skip


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``zsbench`` subparsers ``sub``; its handler is set with ``set_defaults``."""
    bp = sub.add_parser(
        "bench",
        help="measure training and PGD-10 evaluation throughput, FLOPs, share of the matmul peak, and the speed-up "
        "over the official code's way of computing them",
        description="Time one training step of a method (default pmg_aft: the recipe's training PGD, the loss, "
        "backward, SGD) and a PGD-10 evaluation batch through this package's code, count their FLOPs, measure the "
        "machine's dense matmul peak in the same run, and time the same work computed as the official code does "
        "(text prompts re-encoded at every forward, nothing frozen). Random weights by default: nothing to "
        "download. Writes a JSON and prints a table.",
    )
    bp.add_argument("--method", default="pmg_aft", help="method whose training step is timed (default pmg_aft)")
    bp.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    bp.add_argument("--pretrained", default="random", help="weights: 'random' (default), an open_clip tag or a file")
    bp.add_argument("--batch-size", default="32", help="training batch, and evaluation batch unless given (default 32)")
    bp.add_argument("--eval-batch-size", help="evaluation batch (default: --batch-size)")
    bp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    bp.add_argument("--steps", default="3", help="timed steps of each of our phases (default 3)")
    bp.add_argument(
        "--warmup",
        help="untimed steps after the FLOP-counting one (default 0 on the CPU, 2 on a GPU or with --compile)",
    )
    bp.add_argument("--naive-steps", default="1", help="timed steps of each naive phase (default 1: they are slow)")
    bp.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    bp.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="training autocast (default auto: bf16 on a GPU, fp32 on the CPU); the evaluation attack runs in fp32",
    )
    bp.add_argument("--compile", action="store_true", help="torch.compile the image towers (off by default)")
    bp.add_argument("--threads", help="torch CPU threads (default: torch's, one per usable core)")
    bp.add_argument(
        "--joint-forward",
        choices=["auto", "on", "off"],
        default="auto",
        help="run clean and adversarial images through the trained model as one batch (PMG-AFT): auto (default) "
        "does as the training engine, on a GPU only; on or off to compare",
    )
    bp.add_argument("--peak-size", help="largest side of the peak matmul (default 8192 on the CPU, 16384 on a GPU)")
    bp.add_argument(
        "--defense",
        help="also time the PGD-10 evaluation of this test-time defense (ttc, clipure), non-adaptive and adaptive, "
        "beside the undefended one",
    )
    bp.add_argument("--eot-samples", help="EOT samples of the defense's adaptive attack (default: the defense's)")
    bp.add_argument("--seed", default="0", help="seed of the random batch and of the attacks' starts (default 0)")
    bp.add_argument("--out", help="JSON file to write (default bench-<arch>-<device>-b<batch>.json here)")
    bp.set_defaults(handler=_main)
    return bp


def _main(args: argparse.Namespace) -> int:

    batch = positive_int("batch-size", args.batch_size)
    cfg = BenchConfig(
        method=args.method,
        arch=args.arch,
        pretrained=args.pretrained,
        batch_size=batch,
        eval_batch_size=positive_int("eval-batch-size", args.eval_batch_size),
        device=args.device,
        steps=positive_int("steps", args.steps),
        warmup=positive_int("warmup", args.warmup, minimum=0),
        naive=not args.no_naive,
        naive_steps=positive_int("naive-steps", args.naive_steps),
        precision=args.precision,
        compile=args.compile,
        threads=positive_int("threads", args.threads),
        joint_forward=args.joint_forward,
        seed=positive_int("seed", args.seed, minimum=0, maximum=2**31 - 1),
        peak_size=positive_int("peak-size", args.peak_size, minimum=256),
        defense=args.defense,
        eot_samples=positive_int("eot-samples", args.eot_samples, maximum=1000),
        argv=_command_line(args),
    )
    out = Path(args.out) if args.out else Path(f"bench-{cfg.arch}-{resolve_device(cfg.device).type}-b{batch}.json")
    run_bench(cfg, out)
    return 0


def _command_line(args: argparse.Namespace) -> tuple[str, ...]:
    """The options as given (flags set, values not None or empty), to record the command that made a JSON."""
    out: list[str] = []
    for name in _OPTIONS:
        value = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value not in (None, False, ""):
            out += [flag, str(value)]
    return tuple(out)
