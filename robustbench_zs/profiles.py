"""Profiles: one name for a whole set of knobs that change the numbers, in evaluation and in training.

- ``standard`` (recommended): CLIP normalization, logit scale 100, fp32 attacks, every image of every test set, the
  ensemble prompts of CLIP_benchmark, and the model's own open_clip preprocessing.
- ``paper``: what the official PMG-AFT code ran (protocol.md section 4): ImageNet normalization, logit scale 1 for
  every method, fp16 autocast around the attacks (mean-reduced loss, no loss scaling), PIL Resize(256) +
  CenterCrop(224) with CIFAR/STL at native resolution, the paper's single prompts. ``paper_subsample`` (off unless
  asked for with ``--paper-subsample``) evaluates only every 20th batch of 256 images, as the paper's validation did.

A record stores the profile's name and each knob on its own (``record["profile"]``), and the leaderboard ranks only
rows whose knobs agree. Explicit flags (``--logit-scale`` and so on) override single knobs; the record then names
the profile ``custom`` so that no one mistakes it for the named set.

A profile is a whole protocol, training included: :data:`TRAIN_PROFILES` holds, under the same names, the knobs
``zsbench train`` (and a ``run`` that trains on the way) trains with (:class:`TrainProfile`). ``paper`` trains as the
official PMG-AFT code's ``train()`` did (``PMG_AFT.py`` as published, before its 2024-05-29 commit): ImageNet
normalization, tau = 1, float16 autocast with a gradient scaler, the training attack's cross-entropy averaged over
the batch inside that autocast (so its input gradients can underflow, as the official attack's did), the image
tower in training mode while it is attacked, the official training transform of each training set, and the last
partial batch of every epoch kept (``DataLoader(drop_last=False)``). A checkpoint's ``meta.json`` stores every
training knob, every record evaluated with it carries them (``record["model"]["training"]["knobs"]``), and the
leaderboard flags rows whose training and evaluation knobs differ (:func:`train_eval_differences`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

from .errors import ZSBenchError

#: Normalization constants, by name (protocol.md section 4: PMG-AFT's code uses ImageNet's, the others CLIP's).
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

#: Logit-scale choices: a fixed value, or the model's learned temperature.
LOGIT_SCALES = ("100", "1", "learned")


@dataclass(frozen=True)
class HeadKnobs:
    """The knobs of the zero-shot head that change the numbers; stored in every record."""

    normalization: str = "clip"
    logit_scale: str = "100"
    resize: str = "bicubic"

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ZSBenchError(
                f"unknown normalization {self.normalization!r}; choose one of {', '.join(NORMALIZATIONS)}"
            )
        if self.logit_scale not in LOGIT_SCALES:
            raise ZSBenchError(f"unknown logit scale {self.logit_scale!r}; choose one of {', '.join(LOGIT_SCALES)}")

    def resolve_logit_scale(self, model) -> float:
        if self.logit_scale == "learned":
            scale = getattr(model, "logit_scale", None)
            if scale is None:
                raise ZSBenchError("--logit-scale learned: this model has no learned logit scale; use 100 or 1")
            return float(scale.detach().exp().item())
        return float(self.logit_scale)

    def to_dict(self) -> dict:
        return asdict(self)


PAPER_SUBSAMPLE_EVERY = 20
PAPER_SUBSAMPLE_BATCH = 256


@dataclass(frozen=True)
class Profile:
    """The knobs of one evaluation profile.

    Attributes:
        name: ``paper``, ``standard`` or ``custom`` (a named profile with a knob changed).
        normalization: ``clip`` or ``imagenet`` mean/std inside the classifier.
        logit_scale: ``100``, ``1`` or ``learned``.
        attack_precision: ``fp32``, ``bf16`` or ``fp16`` (fp16: the official code's autocast, mean-reduced loss).
        preprocess: ``paper`` or ``standard`` (see ``datasets.preprocess``).
        prompts: ``paper`` or ``ensemble``.
        paper_subsample: evaluate only every 20th batch of 256 test images (the official validation loop).
    """

    name: str
    normalization: str
    logit_scale: str
    attack_precision: str
    preprocess: str
    prompts: str
    paper_subsample: bool = False

    def knobs(self) -> dict:
        """Every knob but the name, for records and for comparing profiles."""
        d = asdict(self)
        d.pop("name")
        return d

    def with_overrides(self, **changes) -> Profile:
        """This profile with some knobs changed (``None`` values are ignored); renamed ``custom`` if any changed."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - set(self.knobs())
        if unknown:
            raise ZSBenchError(
                f"unknown profile knob(s) {', '.join(sorted(unknown))}; knobs: {', '.join(self.knobs())}"
            )
        new = replace(self, **changes)
        return new if new.knobs() == self.knobs() else replace(new, name="custom")


PROFILES: dict[str, Profile] = {
    "standard": Profile(
        name="standard",
        normalization="clip",
        logit_scale="100",
        attack_precision="fp32",
        preprocess="standard",
        prompts="ensemble",
    ),
    "paper": Profile(
        name="paper",
        normalization="imagenet",
        logit_scale="1",
        attack_precision="fp16",
        preprocess="paper",
        prompts="paper",
    ),
}


def get_profile(name: str) -> Profile:
    """The named profile, or a one-line error listing the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ZSBenchError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None


def knob_differences(a: dict, b: dict) -> list[str]:
    """The knobs on which two records' profiles differ, as ``knob: a vs b`` lines (empty when they agree)."""
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def profile_family(prof: Profile) -> str | None:
    """The named profile ``prof`` is, or is with the paper subsample added (``paper`` for ``paper`` plus
    ``--paper-subsample``, recorded as ``custom``); None for a profile with another knob changed."""
    if prof.name in PROFILES:
        return prof.name
    return next((p.name for p in PROFILES.values() if p.knobs() == {**prof.knobs(), "paper_subsample": False}), None)


#: Values of the training knobs (see :class:`TrainProfile`).
TRAIN_PRECISIONS = ("fp32", "bf16", "fp16")
ATTACK_REDUCTIONS = ("sum", "mean")
ATTACK_MODES = ("eval", "train")
LAST_BATCH = ("drop", "keep")


@dataclass(frozen=True)
class TrainProfile:
    """The knobs of one training profile (what ``zsbench train --profile`` sets; each has a flag of its own).

    Attributes:
        name: ``paper``, ``standard`` or ``custom`` (a named profile with a knob changed).
        normalization: ``clip`` or ``imagenet`` mean/std inside the classifier being trained.
        logit_scale: ``100``, ``1`` or ``learned``: tau of the training logits (the loss and the training attack).
        precision: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast with a gradient scaler, the official code's
            ``torch.cuda.amp``).
        attack_reduction: how the training attack reduces its per-image losses before the gradient: ``sum`` (each
            image's gradient is its own; no underflow) or ``mean`` (the official code's ``CrossEntropyLoss()`` on the
            batch: under fp16 autocast small gradients underflow to zero, as there).
        attack_mode: the trained model's mode while the training attack runs: ``eval`` (BatchNorm keeps its running
            statistics) or ``train`` (the official PMG-AFT/TeCoA code: ``model.visual.train()`` for the whole epoch,
            attack included). A method whose own official code fixes it (FARE, TWINS: eval) keeps its own; the
            checkpoint records the mode that ran. Identical for ViTs without dropout.
        preprocess: ``paper`` (the official training transform of each training set: Resize(256) + CenterCrop(224)
            for TinyImageNet, CIFAR-100 and ImageNet, CIFAR-10 native) or ``standard`` (the model's own resize and
            crop).
        prompts: ``paper`` or ``ensemble``: the prompt set of the training text head.
        last_batch: ``keep`` (the official loaders: ``drop_last=False``, 391 steps per TinyImageNet epoch at batch
            256) or ``drop`` (only full batches, as open_clip's training loader).
        official_options: a method's options default to its official code's values where they differ from its
            paper's equations (``Method.official_options``; PMG-AFT: the published KL direction and summed KL), or
            (False) to the paper's equations. Options given explicitly always win.
    """

    name: str
    normalization: str
    logit_scale: str
    precision: str
    attack_reduction: str
    attack_mode: str
    preprocess: str
    prompts: str
    last_batch: str
    official_options: bool = False

    def __post_init__(self) -> None:
        for knob, allowed in (
            ("precision", TRAIN_PRECISIONS),
            ("attack_reduction", ATTACK_REDUCTIONS),
            ("attack_mode", ATTACK_MODES),
            ("preprocess", ("paper", "standard")),
            ("prompts", ("paper", "ensemble")),
            ("last_batch", LAST_BATCH),
        ):
            value = getattr(self, knob)
            if value not in allowed:
                raise ZSBenchError(f"unknown training {knob} {value!r}; choose one of {', '.join(allowed)}")
        HeadKnobs(normalization=self.normalization, logit_scale=self.logit_scale)  # validates both

    def knobs(self) -> dict:
        """Every knob but the name."""
        d = asdict(self)
        d.pop("name")
        return d

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **changes) -> TrainProfile:
        """This profile with some knobs changed (``None`` values are ignored); renamed ``custom`` if any changed."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - set(self.knobs())
        if unknown:
            raise ZSBenchError(
                f"unknown training knob(s) {', '.join(sorted(unknown))}; knobs: {', '.join(self.knobs())}"
            )
        new = replace(self, **changes)
        return new if new.knobs() == self.knobs() else replace(new, name="custom")

    def head_knobs(self):
        """The zero-shot head knobs (normalization, logit scale) of the classifier being trained."""
        return HeadKnobs(normalization=self.normalization, logit_scale=self.logit_scale)


TRAIN_PROFILES: dict[str, TrainProfile] = {
    "standard": TrainProfile(
        name="standard",
        normalization="clip",
        logit_scale="100",
        precision="fp32",
        attack_reduction="sum",
        attack_mode="eval",
        preprocess="standard",
        prompts="ensemble",
        last_batch="drop",
        official_options=False,
    ),
    "paper": TrainProfile(
        name="paper",
        normalization="imagenet",
        logit_scale="1",
        precision="fp16",
        attack_reduction="mean",
        attack_mode="train",
        preprocess="paper",
        prompts="paper",
        last_batch="keep",
        official_options=True,
    ),
}

#: Knobs that training and evaluation share: a model trained with one value and evaluated with another is flagged.
SHARED_KNOBS = ("normalization", "logit_scale", "preprocess", "prompts")


def get_train_profile(name: str) -> TrainProfile:
    """The named training profile, or a one-line error listing the known ones."""
    try:
        return TRAIN_PROFILES[name]
    except KeyError:
        raise ZSBenchError(f"unknown profile {name!r}; choose one of {', '.join(TRAIN_PROFILES)}") from None


def train_profile_for(prof: Profile) -> TrainProfile:
    """The training profile that goes with an evaluation profile: the one of the same name (of its family, for
    ``paper`` with the paper subsample), with the knobs both share set to the evaluation's (so that ``zsbench run
    --normalization imagenet`` trains what it evaluates); ``standard``'s for a profile of no family."""
    base = TRAIN_PROFILES[profile_family(prof) or "standard"]
    return base.with_overrides(**{k: getattr(prof, k) for k in SHARED_KNOBS})


def legacy_training_knobs(meta: dict) -> dict:
    """The training knobs of a checkpoint written before training profiles existed (its ``meta.json``): the head
    knobs of its recipe, its precision, preprocessing and prompts, and what the engine then always did (per-image
    summed attack loss, eval mode while attacked, only full batches)."""
    recipe = meta.get("recipe") or {}
    return {
        "name": "custom",
        "normalization": recipe.get("normalization"),
        "logit_scale": None if recipe.get("logit_scale") is None else str(recipe.get("logit_scale")),
        "precision": meta.get("precision", "fp32"),
        "attack_reduction": "sum",
        "attack_mode": "eval",
        "preprocess": meta.get("preprocess"),
        "prompts": meta.get("prompts"),
        "last_batch": "drop",
        "official_options": False,
    }


def training_knobs(meta: dict) -> dict:
    """The training knobs a checkpoint folder's ``meta.json`` records (``train_profile``), or those it implies."""
    knobs = meta.get("train_profile")
    return dict(knobs) if isinstance(knobs, dict) else legacy_training_knobs(meta)


def train_eval_differences(train: dict | None, profile: dict, unused: Iterable[str] = ()) -> list[str]:
    """The knobs a model was trained with that its evaluation set otherwise, as ``knob: trained X, evaluated Y``.

    Args:
        train: the record's ``model.training.knobs`` (None: unknown, e.g. a foreign checkpoint: nothing to compare).
        profile: the record's ``profile`` block (``preprocess`` is a dict there: its ``profile`` is compared).
        unused: knobs the method's training never read (``model.training.knobs_unused``: FARE has no logits, so no
            logit scale and no prompts), never compared.
    """
    if not train:
        return []
    out = []
    for k in (k for k in SHARED_KNOBS if k not in set(unused)):
        have, want = train.get(k), profile.get(k)
        if isinstance(want, dict):
            want = want.get("profile")
        if have is None or want is None:
            continue
        if str(have) != str(want):
            out.append(f"{k}: trained {have}, evaluated {want}")
    return out


def run_config_fields(profile: Profile) -> dict:
    """The ``engine.runner.RunConfig`` fields a profile sets (the attack precision goes into each ``Threat``)."""
    return {
        "knobs": HeadKnobs(normalization=profile.normalization, logit_scale=profile.logit_scale),
        "prompts": profile.prompts,
        "preprocess": profile.preprocess,
        "paper_subsample": profile.paper_subsample,
        "profile": profile.name,
        "train_profile": train_profile_for(profile),
    }
