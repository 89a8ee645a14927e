"""``zsbench run``: plan (method x dataset x threat), skip what exists, evaluate the rest, build and store records."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dist_utils
from ..attacks import ATTACKS, Threat
from ..attacks.sanity import leaderboard_flags, record_checks
from ..datasets import DATASETS, DatasetSpec, ImageDataset, Subset, select_subset
from ..datasets.cache import TensorCache, worth_caching
from ..datasets.preprocess import Preprocess, PreprocessedDataset, resolve_preprocess
from ..datasets.prompts import prompt_set
from ..datasets.subset import paper_subsample_of
from ..datasets.tiers import FAST_SELECTION, SUBSET_FILE_KEYS, check_run, fast_subset, tier_of
from ..errors import ZSBenchError
from ..methods import METHODS
from ..methods.defense import DEFENSE_EVALUATIONS, is_defense
from ..models import NORMALIZATIONS, HeadKnobs, LoadedModel, ModelSpec, ZeroShotClassifier, build_text_head
from ..models.loader import model_identity, model_preprocess_cfg
from ..models.text_head import text_weights_sha256
from ..profiles import TRAIN_PROFILES, TrainProfile
from ..provenance import default_cache_dir, device_description, device_name, software
from ..results import SCHEMA_VERSION, Record, RecordStore, ensure_writable, record_key, result_block
from ..results.cost import cost_block
from ..results.stats import pack_bools
from ..results.store import record_lock
from ..train import TrainConfig, train
from .batching import auto_batch_size
from .evaluator import EvalResult, evaluate
from .variants import MethodVariant, resolve_variants


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
    # the protocol tier (robustbench_zs.datasets.tiers): "fast" evaluates the shipped 1,000-image subsets under
    # apgd-ce+t, "gold" the full test splits under standard AutoAttack; None: the images and attacks given
    tier: str | None = None
    # the training knobs a checkpoint must have been trained with (and a missing one is trained with); None: any
    # checkpoint, trained with the standard profile when missing
    train_profile: TrainProfile | None = None
    # test-time defenses: the evaluations to run (adaptive: ranked; non_adaptive: the papers' protocol, flagged), and
    # the EOT samples of a randomized defense's adaptive attack (None: the method's, at least the literature's)
    defense_eval: tuple[str, ...] = DEFENSE_EVALUATIONS
    eot_samples: int | None = None


@dataclass
class RunSummary:
    """What a run did. ``skipped``: records that existed already; ``skipped_undefined``: (method, dataset, threat)
    combinations not run because the attack is undefined there (APGD-T on fewer than 4 classes), each a dict with
    ``method``, ``dataset``, ``threat`` (label), ``slug`` and ``reason``."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    leaderboard: dict[str, Path] = field(default_factory=dict)
    skipped_undefined: list[dict] = field(default_factory=list)


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
        if cfg.tier == "fast":  # the shipped subset is checked against the split on disk before any model work
            fast_subset(ds_id, data, spec.eval_split)
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


@dataclass(frozen=True)
class PlannedRecord:
    """One record a unit owes: its threat, key, file and seed (None for a full clean pass, which draws nothing).

    ``exists``: a valid record with this key is there and is reused (never under ``--force``, which recomputes it).
    """

    threat: Threat
    key: str
    path: Path
    seed: int | None
    exists: bool


@dataclass
class Unit:
    """One method variant on one dataset, evaluated in one go: its clean pass, then each threat.

    Attributes:
        variant, dataset (the id), spec, data, pre: what is evaluated, and how its images are preprocessed.
        subset: the images (a seeded ``--n`` subset, the paper's subsample or the whole split).
        classnames, templates: the zero-shot head's prompts.
        profile, dataset_block: the record's profile block (less what only the built head knows) and dataset block.
        records: per threat defined on the dataset, clean first, the record it owes (undefined threats, such as
            APGD-T on fewer than 4 classes, are in ``RunSummary.skipped_undefined`` instead).
    """

    variant: MethodVariant
    dataset: str
    spec: DatasetSpec
    data: ImageDataset
    pre: Preprocess
    subset: Subset
    classnames: list[str]
    templates: list[str]
    profile: dict
    dataset_block: dict
    records: list[PlannedRecord]

    @property
    def clean(self) -> PlannedRecord:
        return self.records[0]

    @property
    def todo(self) -> list[PlannedRecord]:
        """The records to compute, in order (the clean one first when it is missing)."""
        return [r for r in self.records if not r.exists]


@dataclass
class Weights:
    """A variant's model on the device, loaded by the first of its units that has a record to compute."""

    variant: MethodVariant
    loaded: LoadedModel
    encoder: torch.nn.Module | None
    text_sha: str

    @classmethod
    def load(cls, variant: MethodVariant, device: torch.device) -> Weights:
        loaded, encoder = variant.load(device)
        return cls(variant, loaded, encoder, text_weights_sha256(loaded.model))


@dataclass
class Setup:
    """What evaluating a unit's threats needs: the classifier with its text head, the images as the attacks see
    them, the loader workers and the batch size (``--batch-size auto`` resolved)."""

    weights: Weights
    classifier: torch.nn.Module  # a ZeroShotClassifier, or a test-time defense around one
    head_info: dict
    images: torch.utils.data.Dataset
    workers: int
    cache_info: dict | None
    batch_size: int


def plan_units(
    cfg: RunConfig,
    variants: list[MethodVariant],
    datasets: dict[str, tuple[DatasetSpec, ImageDataset, Preprocess]],
    model_id: dict,
    store: RecordStore,
    summary: RunSummary,
    echo: Callable[[str], None],
) -> Iterator[Unit]:
    """Each (variant, dataset) of ``cfg`` as a :class:`Unit`: its images, prompts, profile, and per threat the
    record's identity, key and path, and whether it exists.

    Planned lazily, one unit after the evaluation of the one before, so its notes (subset, undefined threats) are
    printed beside its results and a record written meanwhile by another run is found. Records that exist go into
    ``summary.skipped``, undefined threats into ``summary.skipped_undefined``.
    """
    threats = (Threat(), *cfg.threats)
    precisions = sorted({t.precision for t in cfg.threats})
    attack_precision = ",".join(precisions) if precisions else None
    for variant in variants:
        method_id = variant.method.id
        for ds_id, (spec, data, pre) in datasets.items():
            if cfg.tier == "fast":
                subset = fast_subset(ds_id, data, spec.eval_split)
            elif cfg.paper_subsample:
                subset = paper_subsample_of(spec, data)
            else:
                subset = select_subset(len(data), cfg.n, cfg.seed)
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
            records = []
            for t in threats:
                why = None if t.is_clean else ATTACKS.get(t.name).undefined_for(len(classnames))
                if why is not None:  # e.g. APGD-T on PCAM: the other threats and datasets still run
                    if not any(u["dataset"] == ds_id and u["slug"] == t.slug for u in summary.skipped_undefined):
                        echo(f"note: {t.label} skipped on {ds_id} (undefined): {why}")
                    summary.skipped_undefined.append(
                        {"method": method_id, "dataset": ds_id, "threat": t.label, "slug": t.slug, "reason": why}
                    )
                    continue
                identity = {
                    "method": method_id,
                    **defense_identity(variant.method, variant.evaluation, t, cfg.batch_size),
                    "model": {**model_id, **variant.key_identity},
                    # the images are identified by their indices' hash; how their order was derived is not identity
                    # (nor which shipped file held them: the tier is recorded, never keyed)
                    "dataset": {
                        k: v for k, v in dataset_block.items() if k not in ("name", "paper_order", *SUBSET_FILE_KEYS)
                    },
                    "attack": attack_settings(t, cfg.batch_size),
                    # the knobs; not the profile's name, nor the run's attack precision (a robust record's attack
                    # block holds its own, and a clean pass runs in fp32 whatever the attacks do)
                    "profile": {k: v for k, v in profile.items() if k not in UNKEYED_PROFILE},
                    # the seed draws the subset and the attacks' random starts; a full clean pass uses neither
                    "seed": None if t.is_clean and (subset.is_full or subset.selection == FAST_SELECTION) else cfg.seed,
                }
                key = record_key(identity)
                path = store.path_for(method_id, ds_id, t.slug, key)
                exists = store.exists(path, key) and not cfg.force
                if not exists and not cfg.force:
                    # keyed before names, paths and the profile's name left the key (0.1.0 until 2026-12-06): the
                    # same number, reused where it is
                    old = record_key({**identity, "model": {**model_id, **variant.identity}, "profile": profile})
                    old_path = store.path_for(method_id, ds_id, t.slug, old)
                    if store.exists(old_path, old):
                        key, path, exists = old, old_path, True
                    elif old != key and partial_path(old_path).is_file() and not partial_path(path).exists():
                        # a run killed before the upgrade: its per-image progress goes on under the new key
                        with contextlib.suppress(FileNotFoundError):  # another process of the job moved it
                            os.replace(partial_path(old_path), partial_path(path))
                if exists:
                    summary.skipped.append(path)
                records.append(PlannedRecord(t, key, path, identity["seed"], exists))
            yield Unit(variant, ds_id, spec, data, pre, subset, classnames, templates, profile, dataset_block, records)


#: What a record's profile block holds that changes none of its numbers, so is recorded but not keyed.
UNKEYED_PROFILE = ("name", "attack_precision")


def defense_identity(method, evaluation: dict | None, threat: Threat, batch_size: int | None) -> dict:
    """What a test-time defense adds to a record's identity (nothing for other methods, whose keys stay as they
    were): the evaluation of a robust record (adaptive or not, EOT samples, BPDA), and for a defense whose outputs
    depend on the batch (``DefenseMethod.depends_on_batch``: a randomized one, whose batches are the streams of its
    draws) the batch size (``--batch-size auto`` is refused: it would not fix them).
    The clean record is the same for both evaluations."""
    if not is_defense(method):
        return {}
    out = {} if threat.is_clean else {"evaluation": evaluation}
    if method.depends_on_batch():
        if batch_size is None:
            raise ZSBenchError(
                f"--batch-size auto: {method.id}'s outputs depend on the batch (its random draws follow the batches, "
                "or its steps see the whole batch); give --batch-size N"
            )
        out["defense_batch_size"] = batch_size
    return out


def prepare_unit(
    cfg: RunConfig, unit: Unit, weights: Weights, device: torch.device, workers: int, echo: Callable[[str], None]
) -> Setup:
    """The unit's text head (built or read from its cache), its classifier, its images (through the decoded-tensor
    cache when it pays) and its batch size."""
    head, head_info = build_text_head(
        weights.loaded.model,
        weights.loaded.tokenizer,
        unit.classnames,
        unit.templates,
        cfg.cache_dir,
        text_sha=weights.text_sha,
    )
    loaded = weights.loaded
    classifier = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, cfg.knobs, weights.encoder)
    method = unit.variant.method
    if is_defense(method):  # the test-time defense runs around the classifier at every forward

        def embed_text(classnames: list[str]) -> torch.Tensor:
            m = weights.loaded
            return build_text_head(
                m.model, m.tokenizer, classnames, unit.templates, cfg.cache_dir, text_sha=weights.text_sha
            )[0]

        classifier = method.build_defense(classifier, embed_text)
    images, eval_workers, cache_info = eval_dataset(cfg, unit.spec, unit.data, unit.pre, unit.subset.indices, workers)
    batch_size = cfg.batch_size
    if batch_size is None:
        shape = tuple(images[int(unit.subset.indices[0])][0].shape)
        batch_size = auto_batch_size(classifier, shape, device)
        echo(f"note: --batch-size auto: {batch_size} for {unit.dataset} at {shape[1]}x{shape[2]} px on {device}")
    return Setup(weights, classifier, head_info, images, eval_workers, cache_info, batch_size)


def evaluate_threat(
    cfg: RunConfig,
    unit: Unit,
    setup: Setup,
    planned: PlannedRecord,
    clean: np.ndarray | None,
    zero_grad: np.ndarray | None,
    env: dist_utils.DistEnv | None = None,
) -> EvalResult:
    """The per-image correctness of one planned record: the clean pass, or the attack on the clean-correct images.

    ``clean`` and ``zero_grad``: the masks an earlier record of the unit computed (or its existing clean record
    supplied), so no image is classified twice. An interrupted evaluation of the same record resumes from its
    progress file (:func:`partial_path`) with the images not yet decided. Under torchrun (``env``) the images are
    shared among the processes and every process gets the merged result.
    """
    t = planned.threat
    return evaluate(
        setup.classifier,
        setup.images,
        [] if t.is_clean else [t],
        subset=unit.subset,
        batch_size=setup.batch_size,
        seed=cfg.seed,
        workers=setup.workers,
        progress=cfg.progress,
        desc=f"{unit.variant.method.id}/{unit.dataset} {t.label}",
        clean=clean,
        zero_grad=zero_grad,
        state_path=partial_path(planned.path),
        shard=env if env is not None and env.distributed else None,
        evaluation=None if t.is_clean else unit.variant.evaluation,
    )


def build_record(
    cfg: RunConfig,
    unit: Unit,
    setup: Setup,
    planned: PlannedRecord,
    result: EvalResult,
    started: str,
    device: torch.device,
) -> Record:
    """The record of one evaluated threat: what was measured (method, model, images, attack, profile, seed), how
    (software, device, batch size, caches, wall time, and ``run.cost``: :func:`robustbench_zs.results.cost.cost_block`),
    the result with its per-image bits, and for an attack its sanity checks (and what AutoAttack ran)."""
    t = planned.threat
    variant = unit.variant
    correct = result.clean if t.is_clean else result.robust[t]
    sanity = attack_report = None
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
        sanity = {"checks": checks, "flags": leaderboard_flags(checks)}
        if report is not None:
            attack_report = attack_report_block(report)
    return Record(
        schema_version=SCHEMA_VERSION,
        record_key=planned.key,
        created_utc=_now(),
        software=software(),
        method=variant.method.id,
        method_label=variant.clean_label if t.is_clean else variant.label,
        model={
            **setup.weights.loaded.provenance(),
            **variant.identity,
            "training": variant.training,
            "label": cfg.model.label + (f"+{variant.model_label}" if variant.model_label else ""),
        },
        dataset=unit.dataset_block,
        attack=attack_settings(t, setup.batch_size),
        threat_label=t.label,
        tier=tier_of(unit.dataset_block, attack_settings(t, setup.batch_size)),
        profile={
            **unit.profile,
            "logit_scale_value": setup.classifier.logit_scale,
            "text_head_key": setup.head_info["key"],
        },
        seed=planned.seed,
        run={
            "started_utc": started,
            "wall_time_s": round(result.seconds[t.slug], 4),
            "device": device_description(device),
            "world_size": result.processes,
            "batch_size": setup.batch_size,
            "batch_size_auto": cfg.batch_size is None,
            "workers": setup.workers,
            "text_head_cache_hit": setup.head_info["cache_hit"],
            "tensor_cache": setup.cache_info,
            "cost": cost_block(
                result.spent,
                device_type=device.type,
                device=device_name(device),
                processes=result.processes,
                per_process=torch.get_num_threads() if device.type == "cpu" else 1,
                images=result.n,
            ),
        },
        result=result_block(correct, None if t.is_clean else result.clean),
        sanity=sanity,
        attack_report=attack_report,
        defense=type(variant.method).defense_block() if is_defense(variant.method) else None,
        evaluation=None if t.is_clean else variant.evaluation,
    )


def _outcome(threat: Threat, record: Record) -> str:
    """``PGD-10 L∞ ε=1/255 12.50% [8.1, 18.7] ⚠`` for the run's line per unit."""
    lo, hi = record.ci95
    flags = (record.sanity or {}).get("flags")
    return f"{threat.label} {100 * record.accuracy:.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]" + (
        f" {flags}" if flags else ""
    )


def _silent(_: str) -> None:
    pass


def _prepare_in_turn(cfg, unit, weights, device, workers, echo, env: dist_utils.DistEnv) -> Setup:
    """:func:`prepare_unit`, process 0 first under torchrun, so that it fills the text-head and tensor caches and
    the others read them; every process then uses process 0's batch size (``--batch-size auto``)."""
    if not env.is_main:
        dist_utils.barrier(env)
    setup = prepare_unit(cfg, unit, weights, device, workers, echo)
    if env.is_main:
        dist_utils.barrier(env)
    setup.batch_size = dist_utils.broadcast_object(setup.batch_size, env)
    return setup


def check_config(cfg: RunConfig) -> None:
    """Refuse what no evaluation of ``cfg`` can run (an unknown method, dataset or attack, an attack precision it
    lacks, two ways of choosing the images, a results folder that cannot be written), before any model work, and
    before a sweep's jobs are submitted."""
    for m in cfg.methods:
        METHODS.get(m)
    for d in cfg.datasets:
        DATASETS.get(d)
    for t in cfg.threats:
        ATTACKS.get(t.name).check_precision(t.precision)
    if cfg.paper_subsample and cfg.n is not None:
        raise ZSBenchError("--paper-subsample and --n both choose the images; drop one of them")
    if cfg.tier is not None:
        check_run(cfg.tier, cfg.threats, n=cfg.n, paper_subsample=cfg.paper_subsample, datasets=cfg.datasets)
    ensure_writable(cfg.out_dir)


def run(cfg: RunConfig, echo: Callable[[str], None] = print) -> RunSummary:
    """Evaluate every (method, dataset, threat) of ``cfg`` that has no record yet; returns what was written.

    Per unit (one method variant on one dataset, :func:`plan_units`): load the model (once per variant) and build the
    head (:func:`prepare_unit`), then per missing record, under its lock: evaluate (:func:`evaluate_threat`), build
    the record (:func:`build_record`) and store it. Each record is written as soon as its threat is done, so an
    interruption loses at most the threat in progress.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this: each attacks its share of every record's
    images (:func:`robustbench_zs.engine.evaluator.evaluate`), process 0 decides what exists, holds the locks,
    prints, and writes the records, which equal a single process's (``run.world_size`` says how many computed
    them). The returned summary is process 0's; the others return an empty one.
    """
    check_config(cfg)
    env = dist_utils.setup(cfg.device)
    device = env.device
    if not env.is_main:  # process 0 speaks for the job
        echo = _silent
        cfg = replace(cfg, progress=False)
    workers = cfg.workers if cfg.workers is not None else (0 if device.type == "cpu" else min(8, os.cpu_count() or 1))
    model_id = model_identity(cfg.model)
    datasets = load_datasets(cfg)
    store = RecordStore(cfg.out_dir)
    summary = RunSummary()

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
        defense_eval=cfg.defense_eval,
        eot_samples=cfg.eot_samples,
    )
    weights: Weights | None = None
    for unit in plan_units(cfg, variants, datasets, model_id, store, summary, echo):
        where = f"{unit.variant.label} / {unit.dataset}"
        if env.distributed:  # what process 0 found on disk decides for every process
            found = dist_utils.broadcast_object([r.exists for r in unit.records], env)
            unit.records = [replace(r, exists=e) for r, e in zip(unit.records, found, strict=True)]
        if not unit.todo:
            echo(f"{where}: all {len(unit.records)} records exist, skipped (--force recomputes)")
            continue
        # a defense's evaluations are variants of one model: it is loaded once for all of them
        if weights is None or weights.variant.load is not unit.variant.load:
            weights = None  # the previous variant's model goes before the next one is loaded
            weights = Weights.load(unit.variant, device)
        setup = _prepare_in_turn(cfg, unit, weights, device, workers, echo, env)
        # the clean pass runs once per dataset; an existing clean record supplies it without any forward
        clean = store.read(unit.clean.path).per_example() if unit.clean.exists else None
        zero_grad = None  # the zero-gradient sanity mask, computed by the first attack and reused by the others
        parts = []
        for planned in unit.todo:
            t, path = planned.threat, planned.path
            # process 0 takes the record's lock for the job; the others follow its decision
            with record_lock(path, echo) if env.is_main else contextlib.nullcontext():
                written = not cfg.force and env.is_main and store.exists(path, planned.key)
                if dist_utils.broadcast_object(written, env):  # another run wrote it meanwhile
                    summary.skipped.append(path)
                    if t.is_clean:
                        clean = store.read(path).per_example()
                    parts.append(f"{t.label}: written by another run")
                    continue
                started = _now()
                result = evaluate_threat(cfg, unit, setup, planned, clean, zero_grad, env)
                clean = result.clean
                if result.zero_grad is not None:
                    zero_grad = result.zero_grad
                if env.is_main:
                    record = build_record(cfg, unit, setup, planned, result, started, device)
                    store.write(path, record)
                    partial_path(path).unlink(missing_ok=True)
                    summary.written.append(path)
                    parts.append(_outcome(t, record))
                dist_utils.barrier(env)  # the record is on disk before any process moves on
        echo(f"{where} (n={unit.subset.n}): " + " | ".join(parts))
    return summary
