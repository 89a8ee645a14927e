"""The training engine: one loop for every registered method.

What it does each step (``train(cfg)``):

1. take the next global batch of a seeded per-epoch permutation of the training split (each process of a torchrun
   job takes its share of the same global batch, so the data seen does not depend on the process count); with the
   training profile's ``last_batch = "keep"`` the last, partial batch of each epoch is trained on too, as the
   official code's ``DataLoader(drop_last=False)`` did;
2. build :class:`~robustbench_zs.methods.Step` with the recipe's training PGD (L-inf, uniform random start seeded per
   image by (seed, epoch, image index), sign steps (``pgd``) or RobustVLM's sign steps with momentum
   (``pgd_momentum``), gradients only into the perturbation, the per-image losses summed or averaged over the batch
   (the profile's ``attack_reduction``), the model in eval mode while attacked (BatchNorm statistics untouched) or
   left in training mode as the official PMG-AFT/TeCoA code did (the profile's ``attack_mode``, unless the method
   fixes its own));
3. call ``method.loss(step)`` under autocast (bf16, or fp16 with a gradient scaler, or fp32), backpropagate,
   average gradients across processes (an all-reduce after backward, as DDP does: DDP's module wrapper assumes one
   forward per backward, which adversarial training with several forwards per step breaks), set the learning rate
   (linear warm-up, then cosine to 0 over all steps) and step the optimizer.

Every knob comes from the training profile (:class:`robustbench_zs.profiles.TrainProfile`: normalization, logit
scale, precision, attack reduction and mode, preprocessing per training set, prompts, last batch) and the method's
recipe; ``meta.json`` stores all of them.

Checkpoints hold only what the method trains (safetensors) plus a JSON of metadata; a ``resume/`` state (weights,
optimizer state as safetensors, step, the run's identity; saved as one unit, see :mod:`.state`) is rewritten every
``save_every`` steps and at the end of each epoch, so an interrupted run continues mid-epoch and ends with the same
weights as an uninterrupted one, and a run of another configuration under the same name is refused instead of
resumed. Nothing is unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import distributed as dist_utils
from ..attacks.core import attack_autocast, unit_noise
from ..attacks.pgd import pgd_ascent
from ..datasets import DATASETS
from ..datasets.cache import TensorCache, worth_caching
from ..datasets.preprocess import PreprocessedDataset, resolve_preprocess
from ..datasets.prompts import prompt_set
from ..errors import ZSBenchError
from ..methods import METHODS, Method, Recipe, Step
from ..methods.base import TRAIN_ATTACKS, recipe_value
from ..models import HeadKnobs, LoadedModel, ModelSpec, ZeroShotClassifier, build_text_head, load_model
from ..models.loader import model_identity, model_preprocess_cfg
from ..models.text_head import text_weights_sha256
from ..paths import folder_name
from ..profiles import TRAIN_PROFILES, TrainProfile
from ..progress import Progress
from ..provenance import default_cache_dir, software
from ..weights import read_meta, save_checkpoint
from .state import has_state, identity_differences, load_state, save_state

PRECISIONS = ("fp32", "bf16", "fp16")
RECIPE_FIELDS = tuple(f for f in Recipe.__dataclass_fields__)
#: Momentum of RobustVLM's training PGD (``train/pgd_train.py``: ``momentum=0.9``), for ``train_attack="pgd_momentum"``.
PGD_MOMENTUM = 0.9


def _standard() -> TrainProfile:
    return TRAIN_PROFILES["standard"]


@dataclass(frozen=True)
class TrainConfig:
    """One training run. ``recipe`` overrides the method's recipe field by field; ``options`` its config; ``profile``
    holds every other knob (:class:`~robustbench_zs.profiles.TrainProfile`; ``zsbench train --profile``)."""

    method: str
    model: ModelSpec
    train_dataset: str
    data_root: Path
    out_dir: Path
    options: dict[str, str] = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    max_steps: int | None = None
    profile: TrainProfile = field(default_factory=_standard)
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    save_every: int = 0
    name: str | None = None
    cache_dir: Path | None = None
    tensor_cache: bool = True
    progress: bool | None = None
    compile: bool = False
    prefetch: bool | None = None  # read the next batch during the step (None: on a GPU only; see BatchLoader)
    fresh: bool = False  # start over: ignore (and replace) a resume state or checkpoint already in the folder
    out_flag: str = "--out"  # the flag that chose out_dir, named when a write fails (``zsbench run``: --models-dir)


def resolve_recipe(method: type[Method], overrides: dict) -> Recipe:
    unknown = sorted(set(overrides) - set(RECIPE_FIELDS))
    if unknown:
        raise ZSBenchError(
            f"unknown training option(s) {', '.join(unknown)}; recipe fields: {', '.join(RECIPE_FIELDS)}"
        )
    checked = {}
    for k, v in overrides.items():
        if v is not None:
            try:
                checked[k] = recipe_value(k, v)
            except ValueError as e:
                flag = "--" + k.replace("_255", "").replace("_", "-")
                raise ZSBenchError(f"{flag} {v}: {e}") from None
    recipe = replace(method.recipe, **checked)
    if recipe.optimizer not in ("sgd", "adamw"):
        raise ZSBenchError(f"unknown optimizer {recipe.optimizer!r}; use sgd or adamw")
    if recipe.train_attack not in TRAIN_ATTACKS:
        raise ZSBenchError(f"unknown training attack {recipe.train_attack!r}; use {' or '.join(TRAIN_ATTACKS)}")
    return recipe


def method_options(method: type[Method], options: dict[str, str], profile: TrainProfile) -> dict[str, str]:
    """The option overrides a run trains with: under a profile with ``official_options`` (``paper``), the method's
    official code's values (PMG-AFT: the published KL direction, summed KL) for every option not given."""
    base = dict(method.official_options) if profile.official_options else {}
    return {**base, **options}


def effective_profile(method: type[Method], profile: TrainProfile) -> TrainProfile:
    """The knobs that actually train ``method``: ``profile``, with the attack mode the method's official code fixes
    (FARE, TWINS: eval) where it fixes one. The name stays the profile's: the method, not the user, changed it."""
    mode = method.train_attack_mode
    return profile if mode is None or mode == profile.attack_mode else replace(profile, attack_mode=mode)


def steps_per_epoch(n: int, batch_size: int, last_batch: str, world_size: int = 1) -> int:
    """Optimizer steps per pass over ``n`` images: full batches only (``drop``), or with the last partial one
    (``keep``, the official loaders' ``drop_last=False``: 391 for TinyImageNet's 100,000 images at 256). A last batch
    with fewer images than processes cannot be shared out and is dropped."""
    full, rest = divmod(n, batch_size)
    return full + (1 if last_batch == "keep" and rest >= world_size else 0)


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine to 0 at ``total`` (TeCoA/PMG-AFT schedule)."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span)) * base


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def run_identity(
    cfg: TrainConfig,
    method: Method,
    recipe: Recipe,
    data_fingerprint: str,
    total_steps: int,
    profile: TrainProfile | None = None,
    pipeline: dict | None = None,
) -> dict:
    """Everything that changes the trained weights (the checkpoint folder's name hashes it).

    Args:
        profile: the effective training profile (:func:`effective_profile`); default ``cfg.profile``.
        pipeline: the training images' preprocessing (``Preprocess.describe``).
    """
    prof = profile or cfg.profile
    return {
        "method": cfg.method,
        "config": method.config.to_dict(),
        "recipe": recipe.to_dict(),
        "model": model_identity(cfg.model),
        "train_dataset": cfg.train_dataset,
        "train_content_sha256": data_fingerprint,
        "train_profile": prof.to_dict(),
        "train_preprocess": pipeline,
        "preprocess": prof.preprocess,
        "prompts": prof.prompts,
        "precision": prof.precision,
        "seed": cfg.seed,
        "total_steps": total_steps,
    }


def default_name(cfg: TrainConfig, identity: dict) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    weights = Path(cfg.model.pretrained).stem if cfg.model.pretrained else "none"
    return f"{cfg.method}-{cfg.model.arch}-{weights}-{cfg.train_dataset}-{digest}"


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_attack(
    model: nn.Module,
    x: torch.Tensor,
    seeds: torch.Tensor,
    recipe: Recipe,
    precision: str,
    reduction: str = "sum",
    mode: str = "eval",
) -> Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]:
    """The recipe's training PGD from ``x``, as :attr:`Step.attack` documents: ``attacks.pgd.pgd_ascent`` (the
    evaluation PGD's loop) on the method's loss, L-inf, from the per-image uniform start of ``seeds``.

    Args:
        precision: autocast of the attack's forwards (the training precision, as the official code's attack ran
            inside its training autocast).
        reduction: ``sum`` or ``mean`` of the per-image losses before the gradient; under fp16 autocast ``mean``
            (the official code's ``CrossEntropyLoss()``) lets small input gradients underflow to zero, ``sum`` keeps
            each image's gradient its own.
        mode: ``eval`` (the model in eval mode while attacked) or ``train`` (left as the training loop has it, as
            the official PMG-AFT/TeCoA code's ``model.visual.train()`` did); restored afterwards either way.
    """
    eps, step_size, steps = recipe.train_eps_255 / 255, recipe.train_step_size_255 / 255, recipe.train_steps
    rule = recipe.train_attack

    def attack(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if eps == 0 or steps == 0:
            return x.detach()

        def objective(x_adv: torch.Tensor) -> torch.Tensor:
            with attack_autocast(x.device, precision):
                per_image = loss_fn(x_adv).float()
            return per_image.sum() if reduction == "sum" else per_image.mean()

        was_training = model.training
        if mode == "eval":
            model.eval()
        try:
            delta = pgd_ascent(
                objective,
                x,
                eps=eps,
                step_size=step_size,
                steps=steps,
                norm="linf",
                start=unit_noise(tuple(x.shape[1:]), seeds, x.device, "linf"),
                # TeCoA/PMG-AFT clip the random start to the image before the first forward; RobustVLM does not
                project_start=rule == "pgd",
                # RobustVLM: momentum on the signs, renormalized to a sign
                momentum=PGD_MOMENTUM if rule == "pgd_momentum" else None,
            )
        finally:
            model.train(was_training)
        return (x + delta).detach()

    return attack


def attack_seeds(idx: np.ndarray, seed: int, epoch: int) -> torch.Tensor:
    """One random-start seed per image, from (run seed, epoch, image index): independent of batching and processes."""
    base = (seed * 0x9E3779B97F4A7C15 + (epoch + 1) * 0xBF58476D1CE4E5B9) % 2**62
    return torch.as_tensor([(base + int(i)) % 2**62 for i in idx], dtype=torch.long)


def _optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as flat tensors (for safetensors) plus the JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in rest["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


@dataclass
class TrainingModels:
    """What a training run works on (built by :func:`prepare_models`).

    Attributes:
        encoder: the image encoder being trained (``method.build_encoder``'s result).
        trainable: the parameters the optimizer updates, the only ones with ``requires_grad``.
        model: the classifier being trained, on ``encoder``.
        frozen: the pre-trained classifier (eval mode, no gradients); None unless ``method.needs_frozen``.
    """

    encoder: nn.Module
    trainable: list[nn.Parameter]
    model: ZeroShotClassifier
    frozen: ZeroShotClassifier | None


def prepare_models(
    method: Method, loaded: LoadedModel, knobs: HeadKnobs, head: torch.Tensor | None, device: torch.device
) -> TrainingModels:
    """The classifier ``method`` trains and its frozen pre-trained copy, with gradients only where it trains.

    Args:
        loaded: the backbone from :func:`~robustbench_zs.models.load_model`; ``method.build_encoder`` modifies its
            image tower in place.
        knobs: the training profile's head knobs (normalization, logit scale).
        head: the (C, D) text head, or None for methods without one (a placeholder that is never read).
    """
    frozen_visual = copy.deepcopy(loaded.model.visual).eval() if method.needs_frozen else None
    encoder = method.build_encoder(loaded.model)
    trainable = method.trainable_parameters(encoder)
    trainable_ids = {id(p) for p in trainable}
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    for p in encoder.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    for p in trainable:
        p.requires_grad_(True)
    if head is None:
        head = torch.zeros(1, int(getattr(loaded.model.visual, "output_dim", 1)))  # never used: no logits needed
    model = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, knobs, encoder).to(device)
    frozen = None
    if frozen_visual is not None:
        frozen = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, knobs, frozen_visual).to(device)
        frozen.eval().requires_grad_(False)
    return TrainingModels(encoder, trainable, model, frozen)


#: The ``torch.compile`` backend of ``zsbench train --compile`` (tests swap in a faster one).
COMPILE_BACKEND = "inductor"


def compile_towers(models: TrainingModels) -> None:
    """``--compile``: compile the image towers of the trained and the frozen classifier in place.

    ``nn.Module.compile`` keeps the module and its parameter names (no ``_orig_mod.`` prefix), so checkpoints,
    resume state and the optimizer see the same parameters as without it. Compilation happens at the first step.
    """
    for clf in (models.model, models.frozen):
        if clf is not None:
            clf.visual.compile(backend=COMPILE_BACKEND)


def step_loss(
    method: Method,
    models: TrainingModels,
    x: torch.Tensor,
    y: torch.Tensor,
    seeds: torch.Tensor,
    recipe: Recipe,
    precision: str,
    extras: dict,
    joint_forward: bool | None = None,
    *,
    attack_reduction: str = "sum",
    attack_mode: str = "eval",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training attack and the method's loss on this process's share ``x, y`` of a global batch.

    Returns the loss scaled by the share, ``len(x) / extras["global_batch"]`` (summed over processes it is the
    loss of the global batch), still attached to the graph, and the method's named terms.

    ``joint_forward`` is :attr:`~robustbench_zs.methods.Step.joint_forward`; None (the default) turns it on for
    GPUs only. On the CPU the joint batch measured slower, not faster (ViT-B/32, batch 32, 2 cores: 2-7% in
    ``zsbench bench``, 9% in ``benchmarks/pmg_aft_ladder.py``): a matrix of 1600 rows already keeps the cores
    busy, and the doubled activations (over 32 MiB) fall out of the allocator's reuse and the caches. On a GPU,
    which a batch of 32 underfills, one forward of both batches is expected to help (not measured yet). Results are the same either way, up to float rounding.
    """
    if joint_forward is None:
        joint_forward = x.device.type == "cuda"
    st = Step(
        x=x,
        y=y if method.needs_labels else None,
        model=models.model,
        frozen=models.frozen,
        attack=make_attack(models.model, x, seeds, recipe, precision, attack_reduction, attack_mode),
        extras=extras,
        joint_forward=joint_forward,
    )
    with _autocast(x.device, precision):
        loss, terms = method.loss(st)
    # each process holds an equal share: scaling by it and summing over processes gives the global loss
    return loss.float() * (len(x) / extras.get("global_batch", len(x))), terms


def apply_update(
    scaled: torch.Tensor,
    trainable: list[nn.Parameter],
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    env: dist_utils.DistEnv,
) -> None:
    """Backpropagate ``scaled`` (from :func:`step_loss`), sum gradients across processes and step the optimizer."""
    opt.zero_grad(set_to_none=True)
    (scaler.scale(scaled) if scaler else scaled).backward()
    dist_utils.sum_gradients(trainable, env)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


@dataclass
class TrainResult:
    folder: Path
    steps: int
    losses: list[float]
    resumed_from: int
    seconds: float
    images_per_second: float


def train(cfg: TrainConfig, echo: Callable[[str], None] = print) -> TrainResult:
    """Train ``cfg.method``; returns where the checkpoint is. Resumes from ``<folder>/resume`` when present."""
    method_cls = METHODS.get(cfg.method)
    if method_cls.trains == "nothing":
        raise ZSBenchError(f"{cfg.method} does not train; evaluate it with zsbench run --methods {cfg.method}")
    if cfg.name is not None:
        folder_name(cfg.name, "--name")
    prof = effective_profile(method_cls, cfg.profile)
    method = method_cls(method_cls.Config.from_overrides(method_options(method_cls, cfg.options, prof)))
    recipe = resolve_recipe(method_cls, cfg.recipe)
    env = dist_utils.setup(cfg.device)
    device = env.device
    torch.manual_seed(cfg.seed)

    spec = DATASETS.get(cfg.train_dataset)
    if "train" not in spec.splits:
        with_train = ", ".join(k for k, s in DATASETS.items() if "train" in s.splits)
        raise ZSBenchError(f"{spec.name} has no training split; train on one of: {with_train}")
    model_cfg = model_preprocess_cfg(cfg.model) if prof.preprocess == "standard" else None
    pre = resolve_preprocess(prof.preprocess, spec, model_cfg, train=True)
    data = spec.loader(Path(cfg.data_root), "train")
    n = len(data)
    if recipe.batch_size % env.world_size:
        raise ZSBenchError(f"--batch-size {recipe.batch_size} is not divisible by the {env.world_size} processes")
    per_epoch = steps_per_epoch(n, recipe.batch_size, prof.last_batch, env.world_size)
    if per_epoch == 0:
        raise ZSBenchError(f"--batch-size {recipe.batch_size} exceeds the {n} training images of {spec.name}")
    total_steps = per_epoch * recipe.epochs
    identity = run_identity(cfg, method, recipe, data.fingerprint(), total_steps, prof, pre.describe(spec))
    folder = Path(cfg.out_dir) / (cfg.name or default_name(cfg, identity))
    if not cfg.fresh and (folder / "meta.json").exists():
        try:
            meta = read_meta(folder / "meta.json")
        except ZSBenchError as e:
            raise ZSBenchError(f"{e}; or rerun with --fresh to train it again") from None
        diff = identity_differences({k: meta.get(k) for k in identity}, identity)
        if diff:
            raise ZSBenchError(
                f"{folder} holds a checkpoint of another configuration ({'; '.join(diff[:4])}"
                f"{f'; and {len(diff) - 4} more' if len(diff) > 4 else ''}); rerun with --fresh to replace it, or "
                "give this configuration another --name"
            )
        if meta.get("complete"):
            echo(f"{cfg.method}: already trained at {folder} ({meta['steps']} steps); --fresh retrains it")
            return TrainResult(folder, meta["steps"], [], meta["steps"], 0.0, 0.0)

    loaded = load_model(cfg.model, device)
    method.check_model(loaded.model, cfg.model.arch)
    head = None
    if method.needs_text_head:
        names, templates, _ = prompt_set(spec, data, prof.prompts)
        head, _ = build_text_head(
            loaded.model, loaded.tokenizer, names, templates, cfg.cache_dir, text_sha=text_weights_sha256(loaded.model)
        )
    models = prepare_models(method, loaded, prof.head_knobs(), head, device)
    encoder, trainable, model = models.encoder, models.trainable, models.model
    if cfg.compile:
        compile_towers(models)

    opt = _optimizer(trainable, recipe)
    scaler = torch.amp.GradScaler(device.type) if prof.precision == "fp16" else None
    start = 0
    if has_state(folder / "resume"):
        if cfg.fresh:
            shutil.rmtree(folder / "resume", ignore_errors=True)
        else:
            start = _load_resume(folder / "resume", method, encoder, opt, scaler, identity)
            echo(f"{cfg.method}: resuming at step {start} of {total_steps} from {folder / 'resume'}")
    end = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)

    images = PreprocessedDataset(data, pre)
    workers = cfg.workers if cfg.workers is not None else (0 if device.type == "cpu" else min(8, os.cpu_count() or 1))
    if cfg.tensor_cache and worth_caching(data, pre) and pre.output_size(spec) is not None:
        cache = TensorCache(Path(cfg.cache_dir or default_cache_dir()) / "tensors")  # never the working folder
        images, _ = cache.prepare(spec, "train", data, pre, np.arange(n), workers=workers, progress=cfg.progress)

    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    bar = Progress(end, f"train {cfg.method}", "steps", show=cfg.progress if env.is_main else False, initial=start)
    step = start
    orders: dict[int, np.ndarray] = {}

    def indices(at: int) -> tuple[int, np.ndarray, int]:
        """The epoch of step ``at``, this process's share of its global batch, and the global batch's size (the
        last batch of an epoch can be partial: its shares then differ by at most one image)."""
        epoch, pos = divmod(at, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = epoch_order(n, cfg.seed, epoch)
        global_idx = orders[epoch][pos * recipe.batch_size : (pos + 1) * recipe.batch_size]
        return epoch, np.array_split(global_idx, env.world_size)[env.rank], len(global_idx)

    batches = BatchLoader(images, device, prefetch=device.type == "cuda" if cfg.prefetch is None else cfg.prefetch)
    try:
        while step < end:
            epoch, idx, global_batch = indices(step)
            x, y = batches.get(idx)
            if step + 1 < end:
                batches.request(indices(step + 1)[1])  # read while this step computes (on a GPU)
            seeds = attack_seeds(idx, cfg.seed, epoch)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, recipe.lr, recipe.warmup_steps, total_steps)
            extras = {"global_batch": global_batch, "epoch": epoch, "step": step}
            scaled, terms = step_loss(
                method,
                models,
                x,
                y,
                seeds,
                recipe,
                prof.precision,
                extras,
                attack_reduction=prof.attack_reduction,
                attack_mode=prof.attack_mode,
            )
            # checked before anything of this step is applied, so the state saved below is the last good one
            global_loss = dist_utils.sum_scalar(float(scaled.detach()), env)
            if not math.isfinite(global_loss):
                raise ZSBenchError(
                    f"{cfg.method}: the loss is {global_loss} at step {step + 1} of {total_steps}; that step was not "
                    f"applied and the state after step {step} is kept in {folder / 'resume'}; lower --lr or train "
                    "with --precision fp32"
                )
            apply_update(scaled, trainable, opt, scaler, env)
            step += 1
            losses.append(global_loss)
            bar.set_postfix({k: f"{float(v):.3f}" for k, v in {"loss": global_loss, **terms}.items()})
            bar.update(1)
            if env.is_main and ((cfg.save_every and step % cfg.save_every == 0) or step % per_epoch == 0):
                _save_resume(folder / "resume", method, encoder, opt, scaler, step, identity, cfg.out_flag)
    except BaseException:
        if env.is_main and step > start:
            _save_resume(folder / "resume", method, encoder, opt, scaler, step, identity, cfg.out_flag)
        raise
    finally:
        bar.close()
        batches.close()
    seconds = time.perf_counter() - t0
    done = step - start
    last_size = min(n - (per_epoch - 1) * recipe.batch_size, recipe.batch_size)  # partial under "keep"
    images_done = sum(last_size if (k + 1) % per_epoch == 0 else recipe.batch_size for k in range(start, step))
    ips = images_done / seconds if seconds > 0 else 0.0
    if env.is_main:
        complete = step >= total_steps
        meta = {
            **identity,
            "steps": step,
            "complete": complete,
            "arch": cfg.model.arch,
            "pretrained": cfg.model.pretrained,
            "trains": method.trains,
            "base_weights_sha256": loaded.weights_sha256,
            "base_checkpoint_sha256": loaded.checkpoint_sha256,
            # knobs this method's training never reads (no logits without a text head: FARE), so never flagged
            "train_knobs_unused": [] if method.needs_text_head else ["logit_scale", "prompts"],
            "steps_per_epoch": per_epoch,
            "last_batch_size": last_size,
            "world_size": env.world_size,
            "compiled": cfg.compile,
            "images_per_second": round(ips, 2),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": software(),
        }
        weights = _finite(method.trained_state(encoder), step, folder / "resume")
        save_checkpoint(folder, weights, meta, instead=f"choose another {cfg.out_flag}")
        if step < total_steps:
            _save_resume(folder / "resume", method, encoder, opt, scaler, step, identity, cfg.out_flag)
        else:
            shutil.rmtree(folder / "resume", ignore_errors=True)
        echo(
            f"{cfg.method}: {done} steps ({step}/{total_steps}) in {seconds:.1f} s, {ips:.1f} images/s; "
            f"checkpoint {folder}"
        )
    dist_utils.barrier(env)
    return TrainResult(folder, step, losses, start, seconds, ips)


class BatchLoader:
    """Training batches as float images in [0, 1] on the device, optionally read one step ahead in a thread.

    A dataset with a ``take(indices)`` method (the tensor cache: one gather from its memory map) is read in one
    call, anything else image by image. With ``prefetch`` the next batch is read and pinned on a background thread
    while the device computes the current step (the step ends with a host sync, so a batch read after it would
    leave a GPU idle); only host work happens on the thread, the copy to the device stays on the caller's.
    """

    def __init__(self, images, device: torch.device, prefetch: bool = False) -> None:
        self.images, self.device = images, device
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zsbench-batch") if prefetch else None
        self.pending: tuple[bytes, Future] | None = None
        self.pin = prefetch and device.type == "cuda"  # pinned pages let the copy to the GPU run asynchronously

    def _read(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        take = getattr(self.images, "take", None)
        if take is not None:
            u8, labels = take(idx)
        else:
            items = [self.images[int(i)] for i in idx]
            u8, labels = torch.stack([im for im, _ in items]), [lab for _, lab in items]
        labels = torch.as_tensor(labels, dtype=torch.long)
        return (u8.pin_memory(), labels.pin_memory()) if self.pin else (u8, labels)

    def request(self, idx: np.ndarray) -> None:
        if self.pool is not None:
            self.pending = (idx.tobytes(), self.pool.submit(self._read, idx.copy()))

    def get(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        pending, self.pending = self.pending, None
        if pending is not None and pending[0] == idx.tobytes():
            u8, labels = pending[1].result()
        else:
            u8, labels = self._read(idx)
        x = u8.to(self.device, non_blocking=True).float().div_(255)
        return x, labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _save_resume(folder: Path, method, encoder, opt, scaler, step: int, identity: dict, out_flag: str) -> None:
    """The resume state after ``step`` as one unit (:mod:`.state`); never a state with non-finite weights."""
    weights = _finite(method.trained_state(encoder), step, folder)
    tensors, rest = optimizer_tensors(opt)
    extra = {"optimizer": rest, "scaler": scaler.state_dict() if scaler else None}
    save_state(folder, step, weights, tensors, extra, identity, instead=f"choose another {out_flag}")


def _finite(weights: dict[str, torch.Tensor], step: int, resume: Path) -> dict[str, torch.Tensor]:
    """``weights``, or a one-line stop when any is NaN or infinite (nothing of them is saved)."""
    bad = [k for k, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ZSBenchError(
            f"the weights became non-finite by step {step} ({bad[0]}{' and others' if len(bad) > 1 else ''}); the "
            f"last good state stays in {resume}; lower --lr or train with --precision fp32"
        )
    return weights


def _load_resume(folder: Path, method, encoder, opt, scaler, identity: dict) -> int:
    weights, tensors, state = load_state(folder)
    fix = "rerun with --fresh to start over, or give this configuration another --name"
    diff = identity_differences(state["identity"], identity)
    if diff:
        raise ZSBenchError(
            f"{folder} holds the resume state of another configuration ({'; '.join(diff[:4])}"
            f"{f'; and {len(diff) - 4} more' if len(diff) > 4 else ''}); {fix}"
        )
    try:
        method.load_trained_state(encoder, weights)
        load_optimizer_tensors(opt, tensors, state["optimizer"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise ZSBenchError(f"{folder}: the resume state does not fit this model ({_one_line(e)}); {fix}") from None
    return int(state["step"])


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__
