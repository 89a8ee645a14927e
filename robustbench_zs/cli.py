"""The ``zsbench`` command line. ``main(argv)`` takes a list, so tests drive it in process."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .attacks.base import PRECISIONS
from .errors import ZSBenchError
from .paths import not_utf8
from .profiles import PROFILES, TRAIN_PROFILES

EXIT_USAGE = 2
#: the largest evaluation batch accepted (far above what any accelerator holds at 224 px; larger is a typo)
MAX_BATCH = 65536

#: ``--preset smoke``: offline, tiny random-weight model, generated data, clean + PGD at two eps, ~1 minute on 2 cores.
PRESETS = {
    "smoke": {
        "methods": "clip",
        "datasets": "synthetic",
        "arch": "zsbench-tiny",
        "pretrained": "random",
        "attack": "pgd",
        "eps": "1,4",
        "device": "cpu",
        "out": "results/smoke",
        "batch_size": 128,
    },
    "world": {
        "methods": "clip",
        "datasets": "world-colour,world-shape,world-size,world-count,world-position,world-texture,world-composition,"
        "world-objects",
        "arch": "zsbench-world",
        "pretrained": "world",
        "attack": "pgd",
        "eps": "1,2,4",
        "device": "cpu",
        "out": "results/world",
        "batch_size": 256,
        "n": 256,
    },
}

DEFAULTS = {
    "methods": "clip",
    "datasets": "cifar10,cifar100,tinyimagenet",
    "arch": "ViT-B-32",
    "pretrained": "openai",
    "attack": "pgd",
    "eps": "1",
    "steps": None,
    "step_size": None,
    "norm": "linf",
    "n": None,
    "seed": 0,
    "device": "auto",
    "batch_size": 128,
    "workers": None,
    "profile": "standard",
    "normalization": None,
    "logit_scale": None,
    "attack_precision": None,
    "prompts": None,
    "prompt_overrides": None,
    "preprocess": None,
    "attack_resolution": "model",
    "out": None,
    "data_root": None,
}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _split(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ZSBenchError(f"--{what} is empty; give a comma-separated list")
    return items


def parse_eps(value: str, flag: str = "eps") -> list[float]:
    """'1,2,4' (units of 1/255) -> [1/255, 2/255, 4/255], each checked to be a number in [0, 255]."""
    items = [v.strip() for v in str(value).split(",")]
    if not any(items):
        raise ZSBenchError(f"--{flag} is empty; give values in units of 1/255, e.g. --{flag} 1,2,4")
    out = []
    for item in items:
        try:
            if not item or "_" in item:
                raise ValueError
            v = float(item)
        except ValueError:
            raise ZSBenchError(
                f"--{flag} {item!r} is not a number; give values in units of 1/255, e.g. --{flag} 1,2,4"
            ) from None
        if not math.isfinite(v) or v < 0:
            raise ZSBenchError(f"--{flag} {item} is negative or not finite; it is in units of 1/255, >= 0")
        if v > 255:
            raise ZSBenchError(f"--{flag} {item} is over 255; it is in units of 1/255 (255 = the whole pixel range)")
        out.append(v / 255)
    return sorted(set(out))


def parse_step_size(value: str) -> float:
    (step, *rest) = parse_eps(value, "step-size")
    if rest or "," in str(value):
        raise ZSBenchError("--step-size takes one value (units of 1/255)")
    if step == 0:
        raise ZSBenchError("--step-size must be positive")
    return step


def _positive_int(name: str, value, minimum: int = 1, maximum: int | None = None) -> int | None:
    if value is None:
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ZSBenchError(f"--{name} {value!r} is not an integer") from None
    if v < minimum:
        raise ZSBenchError(f"--{name} {v} must be at least {minimum}")
    if maximum is not None and v > maximum:
        raise ZSBenchError(f"--{name} {v} must be at most {maximum}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="zsbench", description="Benchmark of adversarially robust zero-shot CLIP.")
    p.add_argument("--version", action="version", version=f"robustbench_zs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="evaluate methods on datasets, clean and under attack; write records + leaderboard")
    r.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named set of defaults, offline: world (the shipped world CLIP on its 8 tasks, clean and PGD-10 at "
        "1, 2, 4/255) or smoke (a random-weight tiny model: plumbing only)",
    )
    r.add_argument(
        "--methods", help=f"comma-separated method ids (default {DEFAULTS['methods']}; see zsbench list methods)"
    )
    r.add_argument("--datasets", help=f"comma-separated dataset ids (default {DEFAULTS['datasets']})")
    r.add_argument("--arch", help="open_clip architecture (default ViT-B-32)")
    r.add_argument("--pretrained", help="open_clip pretrained tag (default openai), a checkpoint file, or 'random'")
    r.add_argument(
        "--attack",
        help="comma-separated attack ids (pgd, apgd-ce, apgd-t, cw, autoattack; see zsbench list attacks), "
        "or 'none' for clean accuracy only (default pgd)",
    )
    r.add_argument("--eps", help="comma-separated radii in units of 1/255 (default 1)")
    r.add_argument("--norm", choices=["linf", "l2"], help="threat norm (default linf)")
    r.add_argument(
        "--steps", help="attack iterations (default: 10 for pgd and cw, 100 for apgd; autoattack fixes its own)"
    )
    r.add_argument(
        "--step-size", help="attack step in units of 1/255 (default: 1 for linf as in the paper; 2.5*eps/steps for l2)"
    )
    r.add_argument("--n", help="evaluate a seeded random subset of N images per dataset (default: the full split)")
    r.add_argument(
        "--paper-subsample",
        action="store_true",
        help="evaluate only every 20th batch of 256 images, as the paper's validation loop did (recorded)",
    )
    r.add_argument("--seed", help="seed of the subset and of the attacks' random starts (default 0)")
    r.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="a whole set of knobs (default standard: CLIP normalization, logit scale 100, fp32 attacks, ensemble "
        "prompts, the model's preprocessing; paper: as the official code ran); the flags below override single knobs",
    )
    r.add_argument("--normalization", choices=["clip", "imagenet"], help="pixel normalization (profile's by default)")
    r.add_argument("--logit-scale", choices=["100", "1", "learned"], help="logit scale tau (profile's by default)")
    r.add_argument(
        "--attack-precision",
        choices=list(PRECISIONS),
        help="precision of the attack's forward (profile's by default: fp32; bf16 with per-sample summed losses; "
        "fp16 only as the official code, to reproduce the paper)",
    )
    r.add_argument("--prompts", choices=["paper", "ensemble"], help="prompt set (profile's by default)")
    r.add_argument(
        "--prompt-overrides",
        help='JSON file {"<dataset>": {"classnames": [...], "templates": [...]}} replacing parts of the prompt set',
    )
    r.add_argument(
        "--preprocess",
        choices=["paper", "standard"],
        help="image preprocessing (profile's by default; paper: CIFAR/STL-10 native, others Resize(256)+"
        "CenterCrop(224); standard: the model's own resize and crop)",
    )
    r.add_argument(
        "--attack-resolution",
        choices=["model", "native"],
        help="with --preprocess standard: attack at the model's input size (default) or at the native size",
    )
    r.add_argument(
        "--tensor-cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep decoded, preprocessed images as memory-mapped uint8 tensors under $ZSBENCH_CACHE/tensors "
        "so later runs decode nothing (default on)",
    )
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a method option or recipe field, e.g. pmg_aft.kl_direction=published; a comma list sweeps "
        "(interpolation.alpha=0,0.5,1)",
    )
    r.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="METHOD=PATH",
        help="weights of a trained method: a robustbench_zs checkpoint folder, an official PMG-AFT/TeCoA or "
        "RobustVLM file, or zoo:ID (a published checkpoint fetched with zsbench models download ID)",
    )
    r.add_argument(
        "--train-dataset",
        help="use checkpoints trained on this dataset, training one there when none exists (default: any "
        "checkpoint; missing ones are trained on tinyimagenet)",
    )
    r.add_argument(
        "--train-missing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train methods that have no checkpoint (default on; --no-train-missing makes it an error)",
    )
    r.add_argument("--models-dir", help="checkpoint root (default $ZSBENCH_MODELS or ./models)")
    r.add_argument("--data-root", help="dataset root (default $ZSBENCH_DATA or ./datasets)")
    r.add_argument("--out", help="results folder (default $ZSBENCH_RESULTS or ./results)")
    r.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    r.add_argument(
        "--batch-size",
        help="evaluation batch size (default 128), or 'auto': on a GPU the largest power of two at which an attack "
        "step fits in memory (results do not depend on it)",
    )
    r.add_argument("--workers", help="data-loading worker processes (default: 0 on the CPU, up to 8 with a GPU)")
    r.add_argument("--force", action="store_true", help="recompute records that already exist")
    r.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (default: on a terminal)"
    )

    tr = sub.add_parser("train", help="fine-tune a registered method; writes a checkpoint folder under --out")
    tr.add_argument("--method", required=True, help="method id (see zsbench list methods)")
    tr.add_argument("--train-dataset", default="tinyimagenet", help="dataset with a train split (default tinyimagenet)")
    tr.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    tr.add_argument(
        "--pretrained", default="openai", help="open_clip tag, checkpoint file or 'random' (default openai)"
    )
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a method option (repeatable)")
    for flag, kind, what in [
        ("epochs", int, "passes over the training split"),
        ("batch-size", int, "global batch, split across torchrun processes"),
        ("lr", float, "peak learning rate"),
        ("optimizer", str, "sgd or adamw"),
        ("momentum", float, "SGD momentum"),
        ("weight-decay", float, "weight decay"),
        ("warmup-steps", int, "linear warm-up steps before the cosine decay"),
        ("train-eps", float, "training PGD radius, units of 1/255"),
        ("train-steps", int, "training PGD steps"),
        ("train-step-size", float, "training PGD step, units of 1/255"),
        ("train-attack", str, "training PGD rule: pgd (TeCoA/PMG-AFT) or pgd_momentum (RobustVLM)"),
    ]:
        tr.add_argument(f"--{flag}", type=kind, help=f"{what} (default: the method's recipe)")
    tr.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (the schedule still spans all)")
    tr.add_argument(
        "--profile",
        choices=sorted(TRAIN_PROFILES),
        default="standard",
        help="a whole set of training knobs (default standard: CLIP normalization, logit scale 100, fp32, summed "
        "attack loss, eval mode while attacked, the model's preprocessing, ensemble prompts, full batches only; "
        "paper: as the official PMG-AFT code trained); the flags below override single knobs",
    )
    tr.add_argument("--normalization", choices=["clip", "imagenet"], help="pixel normalization (profile's by default)")
    tr.add_argument("--logit-scale", choices=["100", "1", "learned"], help="logit scale tau (profile's by default)")
    tr.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast (profile's by default)")
    tr.add_argument(
        "--attack-reduction",
        choices=["sum", "mean"],
        help="training attack's loss over the batch (profile's by default; mean under fp16 underflows as the "
        "official code's did)",
    )
    tr.add_argument("--attack-mode", choices=["eval", "train"], help="the model's mode while the training attack runs")
    tr.add_argument("--preprocess", choices=["paper", "standard"], help="image preprocessing (profile's by default)")
    tr.add_argument("--prompts", choices=["paper", "ensemble"], help="prompt set of the text head (profile's)")
    tr.add_argument(
        "--last-batch", choices=["keep", "drop"], help="train on the last partial batch of each epoch (profile's)"
    )
    tr.add_argument(
        "--official-options",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default each method option to the method's official code (PMG-AFT: published KL direction, summed "
        "KL) rather than its paper's equations (profile's by default: on for paper)",
    )
    tr.add_argument("--seed", type=int, default=0, help="data order and attack random starts (default 0)")
    tr.add_argument("--save-every", type=int, default=0, help="write the resume state every N steps (and each epoch)")
    tr.add_argument("--name", help="checkpoint folder name (default: method-arch-weights-data-<config hash>)")
    tr.add_argument(
        "--fresh",
        action="store_true",
        help="start over: discard the resume state or checkpoint already in the --name folder (a run of another "
        "configuration there is refused without it)",
    )
    tr.add_argument("--data-root", help="dataset root (default $ZSBENCH_DATA or ./datasets)")
    tr.add_argument("--out", help="checkpoint root (default $ZSBENCH_MODELS or ./models)")
    tr.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (under torchrun: one GPU per process)")
    tr.add_argument("--workers", type=int, help="decoding processes for the first fill of the tensor cache")
    tr.add_argument("--tensor-cache", action=argparse.BooleanOptionalAction, default=True, help="decode once (default)")
    tr.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    tr.add_argument(
        "--compile", action="store_true", help="torch.compile the image towers (first step slower; off by default)"
    )

    ls = sub.add_parser("list", help="list the registered methods, datasets or attacks")
    ls.add_argument("what", choices=["methods", "datasets", "attacks"])

    ds = sub.add_parser("datasets", help="inspect the datasets under a data root")
    ds_sub = ds.add_subparsers(dest="action", required=True, parser_class=_Parser)
    chk = ds_sub.add_parser("check", help="which datasets are found, missing or broken, and what to do")
    chk.add_argument("--data-root", help="dataset root (default $ZSBENCH_DATA or ./datasets)")
    dl = ds_sub.add_parser(
        "download", help="fetch datasets with torchvision's downloader, or print the exact manual steps"
    )
    dl.add_argument("names", help="comma-separated dataset ids (see zsbench list datasets)")
    dl.add_argument("--data-root", help="dataset root (default $ZSBENCH_DATA or ./datasets)")

    lb = sub.add_parser("leaderboard", help="rebuild leaderboard.md and leaderboard.csv from the records")
    lb.add_argument("--out", help="results folder (default $ZSBENCH_RESULTS or ./results)")
    lb.add_argument(
        "--mix-profiles",
        action="store_true",
        help="rank rows measured under different profile knobs in one table (each row names its profile)",
    )

    for name, handler in {"run": _run, "train": _train, "list": _list, "datasets": _datasets}.items():
        sub.choices[name].set_defaults(handler=handler)
    lb.set_defaults(handler=_leaderboard)
    # Commands defined in their own modules: each adds its subparser and sets its handler with set_defaults.
    from . import compare as compare_cmd

    compare_cmd.add_parser(sub)
    from .paper import cli as reproduce_cmd

    reproduce_cmd.add_parser(sub)
    from .zoo import cli as models_cmd

    models_cmd.add_parser(sub)
    from .bench import cli as bench_cmd

    bench_cmd.add_parser(sub)
    from .world import cli as world_cmd

    world_cmd.add_parser(sub)
    return p


def build_threats(
    attacks: str, eps: str, norm: str, steps: int | None, step_size: str | None, precision: str, given: list[str]
) -> list:
    """The threats of ``--attack A[,B] --eps ...``: one per attack and radius, each with its own default steps."""
    from .attacks import ATTACKS, Threat

    names = _split(attacks, "attack")
    if names == ["none"]:
        if given:
            raise ZSBenchError(f"--{given[0].replace('_', '-')} has no effect with --attack none; drop one of them")
        return []
    if "none" in names:
        raise ZSBenchError("--attack none cannot be combined with attacks; the clean accuracy is always measured")
    entries = [ATTACKS.get(name) for name in names]
    for e in entries:
        e.check_precision(precision)
    if steps is not None and all(e.default_steps is None for e in entries):
        raise ZSBenchError(f"--steps has no effect with --attack {attacks}: it fixes its own iterations; drop it")
    if step_size is not None and not any(e.uses_step_size for e in entries):
        raise ZSBenchError(f"--step-size has no effect with --attack {attacks}: it adapts its own step; drop it")
    fixed_step = parse_step_size(step_size) if step_size is not None else None
    threats = []
    for e in entries:
        n_steps = 0 if e.default_steps is None else (steps or e.default_steps)
        for r in parse_eps(eps):
            step = 0.0
            if e.uses_step_size:
                step = fixed_step or (1 / 255 if norm == "linf" else 2.5 * r / n_steps)
            threats.append(Threat(e.name, norm, r, n_steps, step, precision=precision))
    return threats


def _run(args: argparse.Namespace) -> int:
    from .datasets.prompts import load_overrides
    from .engine.runner import RunConfig, run
    from .leaderboard import write_leaderboard
    from .models import ModelSpec
    from .profiles import get_profile, run_config_fields
    from .provenance import default_cache_dir, default_data_root, default_models_dir, default_results_dir

    opts = dict(DEFAULTS)
    if args.preset:
        opts.update(PRESETS[args.preset])
    opts.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})

    methods = _split(opts["methods"], "methods")
    datasets = _split(opts["datasets"], "datasets")
    steps = _positive_int("steps", opts["steps"])
    n = _positive_int("n", opts["n"])
    seed = _positive_int("seed", opts["seed"], minimum=0, maximum=2**31 - 1)
    batch_size = (
        None
        if str(opts["batch_size"]) == "auto"
        else _positive_int("batch-size", opts["batch_size"], maximum=MAX_BATCH)
    )
    workers = _positive_int("workers", opts["workers"], minimum=0)
    profile = get_profile(opts["profile"]).with_overrides(
        normalization=opts["normalization"],
        logit_scale=opts["logit_scale"],
        attack_precision=opts["attack_precision"],
        prompts=opts["prompts"],
        preprocess=opts["preprocess"],
        paper_subsample=True if args.paper_subsample else None,
    )
    threats = build_threats(
        opts["attack"],
        opts["eps"],
        opts["norm"],
        steps,
        opts["step_size"],
        profile.attack_precision,
        given=[f for f in ("eps", "step_size", "steps", "norm", "attack_precision") if getattr(args, f) is not None],
    )
    out = Path(opts["out"]) if opts["out"] else default_results_dir()
    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    cfg = RunConfig(
        methods=tuple(methods),
        datasets=tuple(datasets),
        model=ModelSpec(opts["arch"], opts["pretrained"]),
        threats=tuple(threats),
        data_root=Path(opts["data_root"]) if opts["data_root"] else default_data_root(),
        out_dir=out,
        **run_config_fields(profile),
        attack_resolution=opts["attack_resolution"],
        tensor_cache=args.tensor_cache,
        prompt_overrides=load_overrides(opts["prompt_overrides"]),
        n=n,
        seed=seed,
        cache_dir=default_cache_dir(),
        device=opts["device"],
        batch_size=batch_size,
        workers=workers,
        force=args.force,
        progress=args.progress,
        method_options=_method_sets(args.set, methods),
        checkpoints=_checkpoints(args.checkpoint, models_dir, opts["arch"], opts["pretrained"], methods),
        models_dir=models_dir,
        train_dataset=args.train_dataset,
        train_missing=args.train_missing,
    )
    if args.preset == "smoke":
        print("smoke preset: tiny random-weight CLIP on generated data; accuracies sit near chance (10%).")
    elif args.preset == "world":
        print(
            "world preset: the world CLIP shipped with the package on its 8 zero-shot tasks (see README: the proxy world)."
        )
    try:
        summary = run(cfg)
    except BaseException:
        # whatever finished is on disk; the leaderboard reflects it even after an interruption or an error
        if (out / "records").is_dir():
            with contextlib.suppress(Exception):
                write_leaderboard(out)
        raise
    paths = write_leaderboard(out) if (out / "records").is_dir() else {}
    undefined = f", {len(summary.skipped_undefined)} undefined, skipped" if summary.skipped_undefined else ""
    print(
        f"records: {out / 'records'} ({len(summary.written)} written, {len(summary.skipped)} already there{undefined})"
    )
    if paths:
        print(f"leaderboard: {paths['markdown']} and {paths['csv']}")
    return 0


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ZSBenchError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _method_sets(items: list[str], methods: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, value in parse_sets(items).items():
        method, dot, option = key.partition(".")
        if not dot or not option:
            raise ZSBenchError(f"--set {key}={value}: expected METHOD.KEY=VALUE, e.g. pmg_aft.beta=0")
        if method not in methods:
            raise ZSBenchError(f"--set {key}: {method} is not among --methods {','.join(methods)}")
        out.setdefault(method, {})[option] = value
    return out


def _checkpoints(
    items: list[str], models_dir: Path, arch: str, pretrained: str, methods: list[str] | None = None
) -> dict[str, Path]:
    """``--checkpoint METHOD=PATH`` or ``METHOD=zoo:ID`` (a downloaded, verified zoo entry: zsbench models); a
    checkpoint for a method not in ``methods``, or for one that trains nothing, is refused (it would be ignored)."""
    from .methods import METHODS
    from .zoo import resolve_zoo_checkpoint

    out = {}
    for item in items:
        method, sep, path = item.partition("=")
        if not sep or not method or not path:
            raise ZSBenchError(f"--checkpoint {item!r}: expected METHOD=PATH or METHOD=zoo:ID")
        method = method.strip()
        if methods is not None and method not in methods:
            raise ZSBenchError(f"--checkpoint {item}: {method} is not among --methods {','.join(methods)}")
        if method in METHODS and METHODS.get(method).trains == "nothing":
            hint = " (its fine-tuned end point is --set interpolation.theta1=PATH)" if method == "interpolation" else ""
            raise ZSBenchError(f"--checkpoint {item}: {method} trains nothing, so it takes no checkpoint{hint}")
        out[method.strip()] = resolve_zoo_checkpoint(path.strip(), models_dir, arch=arch, pretrained=pretrained)
    return out


def _train(args: argparse.Namespace) -> int:
    from .models import ModelSpec
    from .profiles import get_train_profile
    from .provenance import default_cache_dir, default_data_root, default_models_dir
    from .train import TrainConfig, train

    profile = get_train_profile(args.profile).with_overrides(
        normalization=args.normalization,
        logit_scale=args.logit_scale,
        precision=args.precision,
        attack_reduction=args.attack_reduction,
        attack_mode=args.attack_mode,
        preprocess=args.preprocess,
        prompts=args.prompts,
        last_batch=args.last_batch,
        official_options=args.official_options,
    )
    recipe = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": args.optimizer,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "train_eps_255": args.train_eps,
        "train_steps": args.train_steps,
        "train_step_size_255": args.train_step_size,
        "train_attack": args.train_attack,
    }
    cfg = TrainConfig(
        method=args.method,
        model=ModelSpec(args.arch, args.pretrained),
        train_dataset=args.train_dataset,
        data_root=Path(args.data_root) if args.data_root else default_data_root(),
        out_dir=Path(args.out) if args.out else default_models_dir(),
        options=parse_sets(args.set),
        recipe={k: v for k, v in recipe.items() if v is not None},
        max_steps=_positive_int("max-steps", args.max_steps),
        profile=profile,
        seed=_positive_int("seed", args.seed, minimum=0, maximum=2**31 - 1),
        device=args.device,
        workers=_positive_int("workers", args.workers, minimum=0),
        save_every=_positive_int("save-every", args.save_every, minimum=0),
        name=args.name,
        cache_dir=default_cache_dir(),
        tensor_cache=args.tensor_cache,
        progress=args.progress,
        compile=args.compile,
        fresh=args.fresh,
    )
    train(cfg)
    return 0


def _list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    if args.what == "methods":
        from .methods import METHODS

        rows = [[k, m.summary] for k, m in METHODS.items()]
    elif args.what == "datasets":
        from .datasets import DATASETS

        rows = [[k, s.name, s.num_classes, s.eval_split, s.layout] for k, s in DATASETS.items()]
    else:
        from .attacks import ATTACKS

        rows = [["none", "no attack: clean accuracy only"], *[[k, a.description] for k, a in ATTACKS.items()]]
    headers = {
        "methods": ["method", "summary"],
        "datasets": ["dataset", "name", "classes", "split", "layout under the data root"],
        "attacks": ["attack", "description"],
    }[args.what]
    print(tabulate(rows, headers=headers, tablefmt="simple"))
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .datasets import DATASETS, DatasetNotFoundError
    from .provenance import default_data_root

    root = Path(args.data_root) if args.data_root else default_data_root()
    if args.action == "download":
        return _download(root, _split(args.names, "names"))
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
    from .datasets import DATASETS

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


def _leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import write_leaderboard
    from .provenance import default_results_dir

    out = Path(args.out) if args.out else default_results_dir()
    if not (out / "records").is_dir():
        raise ZSBenchError(f"no records under {out / 'records'}; run `zsbench run --out {out}` first")
    paths = write_leaderboard(out, mix_profiles=args.mix_profiles)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"leaderboard: {paths['markdown']} and {paths['csv']}")
    return 0


def one_line(error: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker wrapped it in its traceback."""
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(error).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"zsbench: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = args.handler
    refused = not_utf8(vars(args))
    if refused:
        print(f"zsbench: error: {refused}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            code = handler(args)
            sys.stdout.flush()  # a pipe buffers the output: a reader gone away shows here, not at exit
            return code
    except ZSBenchError as e:
        print(f"zsbench: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("zsbench: interrupted; every record finished so far is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``zsbench ... | head``): stop quietly, as a shell tool does
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush finds no closed pipe
        return 128 + 13  # SIGPIPE's exit status


if __name__ == "__main__":
    sys.exit(main())
