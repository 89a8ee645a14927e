"""``zsbench run``: plan (method x dataset x threat), skip what exists, evaluate the rest, write records."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..attacks import ATTACKS, Threat
from ..attacks.sanity import leaderboard_flags, record_checks
from ..datasets import DATASETS, DatasetSpec, ImageDataset, select_subset
from ..datasets.cache import TensorCache, worth_caching
from ..datasets.preprocess import Preprocess, PreprocessedDataset, resolve_preprocess
from ..datasets.prompts import prompt_set
from ..datasets.subset import paper_subsample_of
from ..errors import ZSBenchError
from ..methods import METHODS
from ..models import NORMALIZATIONS, HeadKnobs, LoadedModel, ModelSpec, ZeroShotClassifier, build_text_head
from ..models.loader import model_identity, model_preprocess_cfg
from ..models.text_head import text_weights_sha256
from ..profiles import TRAIN_PROFILES, TrainProfile
from ..provenance import default_cache_dir, device_description, software
from ..results import SCHEMA_VERSION, RecordStore, ensure_writable, per_example, record_key, result_block
from ..results.stats import pack_bools
from ..results.store import record_lock
from ..train import TrainConfig, train
from .batching import auto_batch_size
from .evaluator import evaluate
from .variants import resolve_variants


@dataclass(frozen=True)
class RunConfig:
    """Everything ``zsbench run`` needs. ``threats`` excludes the clean evaluation, which always runs."""

    methods: tuple[str, ...]
    datasets: tuple[str, ...]
    model: ModelSpec
    threats: tuple[Threat, ...]
    data_root: Path
    out_dir: Path
    knobs: HeadKnobs = field(default_factory=HeadKnobs)
    prompts: str = "paper"
    preprocess: str = "paper"
    attack_resolution: str = "model"
    tensor_cache: bool = True
    prompt_overrides: dict | None = None
    n: int | None = None
    seed: int = 0
    cache_dir: Path | None = None
    device: str = "auto"
    batch_size: int | None = 128  # None: --batch-size auto (engine.batching: the largest that fits a GPU)
    workers: int | None = None  # None: 0 on the CPU, up to 8 loader processes with a GPU
    force: bool = False
    progress: bool | None = None
    method_options: dict = field(default_factory=dict)  # method id -> {option: value} (--set METHOD.key=value)
    checkpoints: dict = field(default_factory=dict)  # method id -> Path (--checkpoint METHOD=PATH)
    models_dir: Path = Path("models")
    train_dataset: str | None = None  # checkpoints must be trained on it; None: any, and train on tinyimagenet
    train_missing: bool = True
    profile: str = "custom"  # the profile name the knobs came from (robustbench_zs.profiles), recorded
    paper_subsample: bool = False  # evaluate every 20th batch of 256 images only, as the paper's validation did
    # the training knobs a checkpoint must have been trained with (and a missing one is trained with); None: any
    # checkpoint, trained with the standard profile when missing
    train_profile: TrainProfile | None = None


@dataclass
class RunSummary:
    """What a run did. ``skipped``: records that existed already; ``skipped_undefined``: (method, dataset, threat)
    combinations not run because the attack is undefined there (APGD-T on fewer than 4 classes), each a dict with
    ``method``, ``dataset``, ``threat`` (label), ``slug`` and ``reason``."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    leaderboard: dict[str, Path] = field(default_factory=dict)
    skipped_undefined: list[dict] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ZSBenchError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ZSBenchError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")


def _profile(knobs: HeadKnobs, preprocess: dict, prompts: str, classnames: list[str], templates: list[str]) -> dict:
    mean, std = NORMALIZATIONS[knobs.normalization]
    return {
        **knobs.to_dict(),
        "mean": list(mean),
        "std": list(std),
        "preprocess": preprocess,
        "prompts": prompts,
        "templates": templates,
        "classnames_sha256": hashlib.sha256(json.dumps(classnames).encode()).hexdigest(),
    }


def attack_report_block(report: dict) -> dict:
    """What an attack that reports (AutoAttack) ran, for the record: components run and skipped with the reason,
    targets, and per component the points robust after it (counts and per-image bits, subset order)."""
    masks = report.get("masks", {})
    return {
        **{k: v for k, v in report.items() if k != "masks"},
        "robust_after": {c: int(np.asarray(m).sum()) for c, m in masks.items()},
        "per_example": {
            "encoding": "packbits-little-base64",
            "order": "subset indices, ascending",
            "robust_after": {c: pack_bools(m) for c, m in masks.items()},
        },
    }


def attack_settings(threat: Threat, batch_size: int | None) -> dict:
    """The attack block of a record and of its key: ``threat.settings()``, plus ``attack_batch_size`` for an attack
    whose results depend on how the images are batched, so that runs (and resumed runs) with another batch size get
    their own record and never mix per-example results: the official AutoAttack package
    (``depends_on_batch_size``), and every fp16 attack (the paper profile's: with a batch-mean loss its input
    gradients underflow more as the batch grows, protocol.md section 4). fp32 and bf16 attacks stay out of it, so
    their records are reused across batch sizes. ``batch_size`` None is ``--batch-size auto``, which such an attack
    refuses (the key would not fix its batch)."""
    settings = threat.settings()
    if settings.get("depends_on_batch_size") or threat.precision == "fp16":
        if batch_size is None:
            why = settings.get("implementation") if settings.get("depends_on_batch_size") else "fp16 autocast"
            raise ZSBenchError(
                f"--batch-size auto: {threat.label}'s results depend on the batch size ({why}); give --batch-size N"
            )
        settings["attack_batch_size"] = batch_size
    return settings


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def partial_path(record_path: Path) -> Path:
    """Where an unfinished evaluation keeps its per-example progress (removed once the record is written)."""
    return record_path.with_name(record_path.stem + ".partial.npz")


def _trainer(cfg: RunConfig, echo: Callable[[str], None]):
    """Train a missing checkpoint with the method's recipe on ``cfg.train_dataset``; returns its folder."""

    def train_missing(method_id: str, options: dict[str, str], recipe: dict) -> Path:
        result = train(
            TrainConfig(
                method=method_id,
                model=cfg.model,
                train_dataset=cfg.train_dataset or "tinyimagenet",
                data_root=Path(cfg.data_root),
                out_dir=Path(cfg.models_dir),
                options=options,
                recipe=recipe,
                profile=cfg.train_profile or TRAIN_PROFILES["standard"],
                seed=cfg.seed,
                device=cfg.device,
                cache_dir=cfg.cache_dir,
                tensor_cache=cfg.tensor_cache,
                progress=cfg.progress,
                out_flag="--models-dir",
            ),
            echo=echo,
        )
        return result.folder

    return train_missing


def load_datasets(cfg: RunConfig) -> dict[str, tuple[DatasetSpec, ImageDataset, Preprocess]]:
    """Load every requested dataset and resolve its preprocessing up front, so bad input fails before model work."""
    model_cfg = model_preprocess_cfg(cfg.model) if cfg.preprocess == "standard" else None
    out = {}
    for ds_id in cfg.datasets:
        spec = DATASETS.get(ds_id)
        pre = resolve_preprocess(cfg.preprocess, spec, model_cfg, cfg.attack_resolution)
        data = spec.loader(Path(cfg.data_root), spec.eval_split)
        if len(data.classnames) != spec.num_classes:
            raise ZSBenchError(f"{spec.name}: {len(data.classnames)} class names for {spec.num_classes} classes")
        out[ds_id] = (spec, data, pre)
    return out


def eval_dataset(cfg: RunConfig, spec: DatasetSpec, data: ImageDataset, pre: Preprocess, indices, workers: int):
    """The images the attacks see: from the decoded-tensor cache when it pays, else preprocessed on the fly.

    Returns (dataset, loader workers to use, cache info or None).
    """
    if cfg.tensor_cache and worth_caching(data, pre) and pre.output_size(spec) is not None:
        cache = TensorCache(Path(cfg.cache_dir or default_cache_dir()) / "tensors")  # never the working folder
        cached, info = cache.prepare(spec, spec.eval_split, data, pre, indices, workers=workers, progress=cfg.progress)
        return cached, 0, info  # rows come straight from the memory map; worker processes would only add overhead
    return PreprocessedDataset(data, pre), workers, None


def run(cfg: RunConfig, echo: Callable[[str], None] = print) -> RunSummary:
    """Evaluate every (method, dataset, threat) of ``cfg`` that has no record yet; returns what was written.

    Each record is written as soon as its threat is done, so an interruption loses at most the threat in progress.
    """
    for m in cfg.methods:
        METHODS.get(m)
    for d in cfg.datasets:
        DATASETS.get(d)
    ensure_writable(cfg.out_dir)
    device = resolve_device(cfg.device)
    workers = cfg.workers if cfg.workers is not None else (0 if device.type == "cpu" else min(8, os.cpu_count() or 1))
    model_id = model_identity(cfg.model)
    datasets = load_datasets(cfg)
    store = RecordStore(cfg.out_dir)
    summary = RunSummary()
    threats = (Threat(), *cfg.threats)
    for t in cfg.threats:
        ATTACKS.get(t.name).check_precision(t.precision)
    precisions = sorted({t.precision for t in cfg.threats})
    attack_precision = ",".join(precisions) if precisions else None
    if cfg.paper_subsample and cfg.n is not None:
        raise ZSBenchError("--paper-subsample and --n both choose the images; drop one of them")

    variants = resolve_variants(
        cfg.methods,
        cfg.model,
        cfg.method_options,
        cfg.checkpoints,
        cfg.models_dir,
        _trainer(cfg, echo) if cfg.train_missing else None,
        echo,
        train_dataset=cfg.train_dataset,
        train_profile=cfg.train_profile,
    )
    for variant in variants:
        method_id = variant.method.id
        loaded: LoadedModel | None = None
        encoder = None
        text_sha: str | None = None
        for ds_id, (spec, data, pre) in datasets.items():
            subset = (
                paper_subsample_of(spec, data) if cfg.paper_subsample else select_subset(len(data), cfg.n, cfg.seed)
            )
            if cfg.paper_subsample:
                echo(
                    f"note: --paper-subsample: {ds_id} evaluates {subset.n} of {len(data)} images (every 20th batch of "
                    f"256 in the official loader's order: {subset.order})"
                )
            elif cfg.n is not None and subset.is_full:
                echo(
                    f"note: --n {cfg.n} >= the {len(data)} images of {ds_id}/{spec.eval_split}; evaluating all of them"
                )
            classnames, templates, prompts = prompt_set(spec, data, cfg.prompts, cfg.prompt_overrides)
            profile = {
                "name": cfg.profile,
                **_profile(cfg.knobs, pre.describe(spec), prompts, classnames, templates),
                "attack_precision": attack_precision,
                "paper_subsample": cfg.paper_subsample,
            }
            dataset_block = {
                "id": ds_id,
                "name": spec.name,
                "split": spec.eval_split,
                "content_sha256": data.fingerprint(),
                **subset.to_dict(),
            }
            plan = []
            defined = 0
            for t in threats:
                why = None if t.is_clean else ATTACKS.get(t.name).undefined_for(len(classnames))
                if why is not None:  # e.g. APGD-T on PCAM: the other threats and datasets still run
                    if not any(u["dataset"] == ds_id and u["slug"] == t.slug for u in summary.skipped_undefined):
                        echo(f"note: {t.label} skipped on {ds_id} (undefined): {why}")
                    summary.skipped_undefined.append(
                        {"method": method_id, "dataset": ds_id, "threat": t.label, "slug": t.slug, "reason": why}
                    )
                    continue
                defined += 1
                identity = {
                    "method": method_id,
                    "model": {**model_id, **variant.identity},
                    # the images are identified by their indices' hash; how their order was derived is not identity
                    "dataset": {k: v for k, v in dataset_block.items() if k not in ("name", "paper_order")},
                    "attack": attack_settings(t, cfg.batch_size),
                    "profile": profile,
                    # the seed draws the subset and the attacks' random starts; a full clean pass uses neither
                    "seed": None if t.is_clean and subset.is_full else cfg.seed,
                }
                key = record_key(identity)
                path = store.path_for(method_id, ds_id, t.slug, key)
                if t.is_clean:
                    clean_path = path
                if store.exists(path, key) and not cfg.force:
                    summary.skipped.append(path)
                else:
                    plan.append((t, key, path, identity["seed"]))
            if not plan:
                echo(f"{variant.label} / {ds_id}: all {defined} records exist, skipped (--force recomputes)")
                continue
            if loaded is None:
                loaded, encoder = variant.load(device)
                text_sha = text_weights_sha256(loaded.model)
            head, head_info = build_text_head(
                loaded.model, loaded.tokenizer, classnames, templates, cfg.cache_dir, text_sha=text_sha
            )
            classifier = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, cfg.knobs, encoder)
            images, eval_workers, cache_info = eval_dataset(cfg, spec, data, pre, subset.indices, workers)
            batch_size = cfg.batch_size
            if batch_size is None:
                shape = tuple(images[int(subset.indices[0])][0].shape)
                batch_size = auto_batch_size(classifier, shape, device)
                echo(f"note: --batch-size auto: {batch_size} for {ds_id} at {shape[1]}x{shape[2]} px on {device}")
            scale = classifier.logit_scale
            parts = []
            # the clean pass runs once per dataset; an existing clean record supplies it without any forward
            clean_mask = per_example(store.read(clean_path)) if clean_path in summary.skipped else None
            zero_mask = None  # the zero-gradient sanity mask, computed by the first attack and reused by the others
            for t, key, path, seed in plan:
                with record_lock(path, echo):
                    if not cfg.force and store.exists(path, key):  # another run wrote it meanwhile
                        summary.skipped.append(path)
                        if t.is_clean:
                            clean_mask = per_example(store.read(path))
                        parts.append(f"{t.label}: written by another run")
                        continue
                    started = _now()
                    result = evaluate(
                        classifier,
                        images,
                        [] if t.is_clean else [t],
                        subset=subset,
                        batch_size=batch_size,
                        seed=cfg.seed,
                        workers=eval_workers,
                        progress=cfg.progress,
                        desc=f"{method_id}/{ds_id} {t.label}",
                        clean=clean_mask,
                        zero_grad=zero_mask,
                        state_path=partial_path(path),
                    )
                    clean_mask = result.clean
                    if result.zero_grad is not None:
                        zero_mask = result.zero_grad
                    correct = result.clean if t.is_clean else result.robust[t]
                    record = {
                        "schema_version": SCHEMA_VERSION,
                        "record_key": key,
                        "created_utc": _now(),
                        "software": software(),
                        "method": method_id,
                        "method_label": variant.label,
                        "model": {
                            **loaded.provenance(),
                            **variant.identity,
                            "training": variant.training,
                            "label": cfg.model.label + (f"+{variant.model_label}" if variant.model_label else ""),
                        },
                        "dataset": dataset_block,
                        "attack": attack_settings(t, batch_size),
                        "threat_label": t.label,
                        "profile": {**profile, "logit_scale_value": scale, "text_head_key": head_info["key"]},
                        "seed": seed,
                        "run": {
                            "started_utc": started,
                            "wall_time_s": round(result.seconds[t.slug], 4),
                            "device": device_description(device),
                            "batch_size": batch_size,
                            "batch_size_auto": cfg.batch_size is None,
                            "workers": eval_workers,
                            "text_head_cache_hit": head_info["cache_hit"],
                            "tensor_cache": cache_info,
                        },
                        "result": result_block(correct, None if t.is_clean else result.clean),
                    }
                    if not t.is_clean:
                        report = result.reports.get(t)
                        checks = record_checks(
                            result.clean,
                            correct,
                            result.above_clean[t],
                            result.zero_grad,
                            report,
                            label=t.label,
                            precision=t.precision,
                        )
                        record["sanity"] = {"checks": checks, "flags": leaderboard_flags(checks)}
                        if report is not None:
                            record["attack_report"] = attack_report_block(report)
                    store.write(path, record)
                    partial_path(path).unlink(missing_ok=True)
                    summary.written.append(path)
                    lo, hi = record["result"]["ci95"]
                    flags = record.get("sanity", {}).get("flags")
                    parts.append(
                        f"{t.label} {100 * record['result']['accuracy']:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
                        + (f" {flags}" if flags else "")
                    )
            echo(f"{variant.label} / {ds_id} (n={subset.n}): " + " | ".join(parts))
    return summary
