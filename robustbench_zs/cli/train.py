"""``zsbench train``: fine-tune a registered method into a checkpoint folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..launch import JobSpec
from ..methods import METHODS
from ..models import ModelSpec
from ..profiles import TRAIN_PROFILES, get_train_profile
from ..provenance import default_cache_dir, default_data_root, default_models_dir
from ..train import TrainConfig, train
from .args import add_launcher_flags, add_progress_flag, launch_options, one_radius_255, parse_sets, positive_int
from .sweep import submit_and_report


def add_parser(sub) -> argparse.ArgumentParser:
    tr = sub.add_parser("train", help="fine-tune a registered method; writes a checkpoint folder under --models-dir")
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
        ("train-eps", str, "training PGD radius, in units of 1/255 (1) or as a fraction (1/255)"),
        ("train-steps", int, "training PGD steps"),
        ("train-step-size", str, "training PGD step, in units of 1/255 (1) or as a fraction (1/255)"),
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
    tr.add_argument(
        "--models-dir",
        help="checkpoint root, the folder zsbench run --models-dir reads (default $ZSBENCH_MODELS or ./models)",
    )
    tr.add_argument("--out", dest="models_dir", help=argparse.SUPPRESS)  # the old name of --models-dir
    tr.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (under torchrun: one GPU per process)")
    tr.add_argument("--workers", type=int, help="decoding processes for the first fill of the tensor cache")
    tr.add_argument("--tensor-cache", action=argparse.BooleanOptionalAction, default=True, help="decode once (default)")
    add_progress_flag(tr)
    add_launcher_flags(tr)
    tr.add_argument(
        "--compile", action="store_true", help="torch.compile the image towers (first step slower; off by default)"
    )
    tr.set_defaults(handler=handle)
    return tr


def handle(args: argparse.Namespace) -> int:

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
        "train_eps_255": None if args.train_eps is None else one_radius_255(args.train_eps, "train-eps"),
        "train_steps": args.train_steps,
        "train_step_size_255": None
        if args.train_step_size is None
        else one_radius_255(args.train_step_size, "train-step-size"),
        "train_attack": args.train_attack,
    }
    cfg = TrainConfig(
        method=args.method,
        model=ModelSpec(args.arch, args.pretrained),
        train_dataset=args.train_dataset,
        data_root=Path(args.data_root) if args.data_root else default_data_root(),
        out_dir=Path(args.models_dir) if args.models_dir else default_models_dir(),
        out_flag="--models-dir",
        options=parse_sets(args.set),
        recipe={k: v for k, v in recipe.items() if v is not None},
        max_steps=positive_int("max-steps", args.max_steps),
        profile=profile,
        seed=positive_int("seed", args.seed, minimum=0, maximum=2**31 - 1),
        device=args.device,
        workers=positive_int("workers", args.workers, minimum=0),
        save_every=positive_int("save-every", args.save_every, minimum=0),
        name=args.name,
        cache_dir=default_cache_dir(),
        tensor_cache=args.tensor_cache,
        progress=args.progress,
        compile=args.compile,
        fresh=args.fresh,
    )
    launch = launch_options(args)
    if launch is not None:  # one job (with --gpus-per-job N: N processes, as torchrun runs them)
        METHODS.get(cfg.method)
        job = JobSpec("train", cfg, (cfg.method,), (cfg.train_dataset,))
        return submit_and_report([job], launch, cfg.out_dir, getattr(args, "argv", []), leaderboard=False)
    train(cfg)
    return 0
