"""``zsbench run``: evaluate methods on datasets, clean and under attack; write records and the leaderboard."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..attacks import ATTACKS, Threat
from ..attacks.base import PRECISIONS
from ..datasets.prompts import load_overrides
from ..datasets.tiers import FAST_DATASETS, TIER_ATTACK, TIERS, check_choices
from ..distributed import is_main_process
from ..engine import runner
from ..engine.runner import RunConfig
from ..errors import ZSBenchError
from ..launch import plan_run_jobs
from ..methods import METHODS
from ..methods.defense import DEFENSE_EVALUATIONS, is_defense
from ..models import ModelSpec
from ..profiles import PROFILES, get_profile, run_config_fields
from ..provenance import default_cache_dir, default_data_root, default_models_dir, default_results_dir
from ..report import write_leaderboard
from ..zoo import resolve_zoo_checkpoint
from .args import (
    MAX_BATCH,
    add_launcher_flags,
    add_progress_flag,
    launch_options,
    parse_eps,
    parse_sets,
    parse_step_size,
    positive_int,
    split_list,
)
from .sweep import submit_and_report

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

#: ``--tier``: a protocol tier's defaults (robustbench_zs.datasets.tiers), layered under a preset's: the paper's 16
#: datasets, and for ``fast`` RobustVLM's radii (its zero-shot tables: 2/255 and 4/255). The tier's attack and images
#: are not defaults: ``handle`` sets them and refuses flags that contradict them.
TIER_DEFAULTS = {
    "fast": {"datasets": ",".join(FAST_DATASETS), "eps": "2,4"},
    "gold": {"datasets": ",".join(FAST_DATASETS)},
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


def add_parser(sub) -> argparse.ArgumentParser:
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
        help="comma-separated attack ids (pgd, apgd-ce, apgd-t, cw, autoattack, apgd-ce+t; see zsbench list attacks), "
        "or 'none' for clean accuracy only (default pgd)",
    )
    r.add_argument(
        "--eps",
        help="comma-separated radii in units of 1/255 (1,4) or as fractions (1/255,4/255) (default 1); plain values "
        "all below 1 are refused as ambiguous unless written as fractions",
    )
    r.add_argument("--norm", choices=["linf", "l2"], help="threat norm (default linf)")
    r.add_argument(
        "--steps", help="attack iterations (default: 10 for pgd and cw, 100 for apgd; autoattack fixes its own)"
    )
    r.add_argument(
        "--step-size",
        help="attack step in units of 1/255 or as a fraction (default: 1 for linf as in the paper; 2.5*eps/steps for l2)",
    )
    r.add_argument(
        "--n",
        "--images",
        dest="n",
        help="evaluate a seeded random subset of N images per dataset (default: the full split); under torchrun "
        "write --images N (torchrun's own parser takes --n for an abbreviation of its options)",
    )
    r.add_argument(
        "--paper-subsample",
        action="store_true",
        help="evaluate only every 20th batch of 256 images, as the paper's validation loop did (recorded)",
    )
    r.add_argument(
        "--tier",
        choices=list(TIERS),
        help="a protocol tier: fast (APGD-CE + APGD-T as RobustVLM ran them, on the 1,000 shipped images per dataset; "
        "eps 2,4 unless --eps) or gold (standard AutoAttack on the full test splits); both default to the paper's "
        "16 datasets, and the tier's images and attack are its own (--n, --paper-subsample, another --attack refused)",
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
    r.add_argument(
        "--defense-eval",
        help="test-time defenses (ttc, clipure): adaptive (the attack differentiates through the defense, EOT over "
        "its randomness; ranked), non_adaptive (the attack sees the undefended model, as the defenses' papers did; "
        "flagged), or both (default adaptive,non_adaptive)",
    )
    r.add_argument(
        "--eot-samples",
        help="draws of a randomized defense's randomness that the adaptive attack averages over (default: the "
        "defense's, 20 as AutoAttack's rand version)",
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
    add_progress_flag(r)
    add_launcher_flags(r)
    r.set_defaults(handler=handle)
    return r


def build_threats(
    attacks: str, eps: str, norm: str, steps: int | None, step_size: str | None, precision: str, given: list[str]
) -> list:
    """The threats of ``--attack A[,B] --eps ...``: one per attack and radius, each with its own default steps."""

    names = split_list(attacks, "attack")
    if names == ["none"]:
        if given:
            raise ZSBenchError(f"--{given[0].replace('_', '-')} has no effect with --attack none; drop one of them")
        return []
    if "none" in names:
        raise ZSBenchError("--attack none cannot be combined with attacks; the clean accuracy is always measured")
    entries = [ATTACKS.get(name) for name in names]
    for e in entries:
        e.check_precision(precision)
        e.check_norm(norm)
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


def handle(args: argparse.Namespace) -> int:

    opts = dict(DEFAULTS)
    if args.tier:  # the tier's defaults under a preset's, then its own attack and images over both
        opts.update(TIER_DEFAULTS[args.tier])
    if args.preset:
        opts.update(PRESETS[args.preset])
    if args.tier:
        given = split_list(args.attack, "attack") if args.attack is not None else [TIER_ATTACK[args.tier]]
        check_choices(args.tier, given, n=args.n, paper_subsample=args.paper_subsample)
        opts.update(attack=TIER_ATTACK[args.tier], n=None)
    opts.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})

    methods = split_list(opts["methods"], "methods")
    datasets = split_list(opts["datasets"], "datasets")
    steps = positive_int("steps", opts["steps"])
    n = positive_int("n", opts["n"])
    seed = positive_int("seed", opts["seed"], minimum=0, maximum=2**31 - 1)
    batch_size = (
        None if str(opts["batch_size"]) == "auto" else positive_int("batch-size", opts["batch_size"], maximum=MAX_BATCH)
    )
    workers = positive_int("workers", opts["workers"], minimum=0)
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
        tier=args.tier,
        defense_eval=_defense_evals(args.defense_eval, methods),
        eot_samples=_eot_samples(args.eot_samples, methods),
    )
    launch = launch_options(args)
    if launch is not None:  # the same plan as jobs on a cluster (or local processes), each unit its own job
        runner.check_config(cfg)
        runner.load_datasets(cfg)  # a missing or incomplete dataset is refused here, not in every job
        return submit_and_report(plan_run_jobs(cfg), launch, out, getattr(args, "argv", []), leaderboard=True)
    main = is_main_process()  # under torchrun, process 0 prints and writes for the job
    if args.preset == "smoke" and main:
        print("smoke preset: tiny random-weight CLIP on generated data; accuracies sit near chance (10%).")
    elif args.preset == "world" and main:
        print(
            "world preset: the world CLIP shipped with the package on its 8 zero-shot tasks (see README: the proxy world)."
        )
    try:
        summary = runner.run(cfg)
    except BaseException:
        # whatever finished is on disk; the leaderboard reflects it even after an interruption or an error
        if (out / "records").is_dir() and main:
            with contextlib.suppress(Exception):
                write_leaderboard(out)
        raise
    if not main:
        return 0
    paths = write_leaderboard(out) if (out / "records").is_dir() else {}
    undefined = f", {len(summary.skipped_undefined)} undefined, skipped" if summary.skipped_undefined else ""
    print(
        f"records: {out / 'records'} ({len(summary.written)} written, {len(summary.skipped)} already there{undefined})"
    )
    if paths:
        print(f"leaderboard: {paths['markdown']} and {paths['csv']}")
    return 0


def _defenses(methods: list[str], flag: str, randomized: bool = False) -> None:
    """Refuse ``flag`` when no method of ``methods`` is a test-time defense (a randomized one, if ``randomized``):
    it would change nothing, which a user who gave it does not expect."""
    wanted = [
        m for m in methods if is_defense(METHODS.get(m)) and (METHODS.get(m).defense.randomized or not randomized)
    ]
    if not wanted:
        kind = "randomized test-time defense" if randomized else "test-time defense"
        defenses = [k for k, m in METHODS.items() if is_defense(m) and (m.defense.randomized or not randomized)]
        raise ZSBenchError(f"{flag} applies to a {kind} ({', '.join(defenses)}), and --methods has none; drop it")


def _eot_samples(value: str | None, methods: list[str]) -> int | None:
    """``--eot-samples``: a whole number from 1 to 1000, for a randomized defense among ``methods``."""
    if value is None:
        return None
    _defenses(methods, "--eot-samples", randomized=True)
    return positive_int("eot-samples", value, maximum=1000)


def _defense_evals(value: str | None, methods: list[str]) -> tuple[str, ...]:
    """``--defense-eval``: ``adaptive``, ``non_adaptive`` (``non-adaptive`` too) or both, comma-separated; both when
    not given."""
    if value is None:
        return DEFENSE_EVALUATIONS
    _defenses(methods, "--defense-eval")
    items = [v.replace("-", "_") for v in split_list(value, "defense-eval")]
    bad = [v for v in items if v not in DEFENSE_EVALUATIONS]
    if bad or len(set(items)) != len(items):
        raise ZSBenchError(f"--defense-eval {value}: give adaptive, non_adaptive or both, comma-separated, each once")
    return tuple(e for e in DEFENSE_EVALUATIONS if e in items)


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
