"""Threat models, the ``Attack`` interface and the attack registry. Images are in [0, 1]; eps is in [0, 1] pixel units
(1/255 = one level)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import ZSBenchError
from ..registry import PluginError, Registry
from .core import clean_correct, clean_logits, eval_mode_no_param_grad

NORMS = ("linf", "l2")
PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_NOTES = {
    "bf16": "bfloat16 autocast forward, per-sample summed loss in fp32 from the logits; robust verdict by fp32 "
    "forwards of the last iterate and of the iterate with the lowest bf16 margin",
    "fp16": "the official PMG-AFT/TeCoA test attack: float16 autocast forward and batch-mean loss without loss "
    "scaling (its input gradients can underflow, PMG-AFT issue #1); verdict from the float16 forward of the last "
    "iterate; for reproducing the paper only",
}


def fmt255(v: float) -> str:
    """0.0039215... -> '1', 0.5/255 -> '0.5' (display only; records keep floats)."""
    x = round(v * 255, 6)
    return f"{x:g}"


@dataclass(frozen=True)
class Threat:
    """One attack setting. ``name == "clean"`` is the unattacked evaluation.

    Args:
        name: registry name of the attack (``pgd``) or ``clean``.
        norm: ``linf`` or ``l2``.
        eps: radius in [0, 1] pixel units.
        steps: attack iterations.
        step_size: step in [0, 1] pixel units (L-inf: per coordinate; L2: Euclidean length of a step).
        random_start: start from a uniform random point of the eps-ball.
        precision: ``fp32`` (default; autocast off), ``bf16`` (the model's forward under bfloat16 autocast, the loss
            still computed in fp32 from the logits) or ``fp16`` (the official code's float16 autocast with a
            batch-mean loss; the ``paper`` profile); see ``attacks.core`` and ``PRECISION_NOTES``. Non-default
            precisions are part of the label and slug.
    """

    name: str = "clean"
    norm: str = "linf"
    eps: float = 0.0
    steps: int = 0
    step_size: float = 0.0
    random_start: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ZSBenchError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if not (0.0 <= self.eps <= 1.0):
            raise ZSBenchError(f"eps {self.eps} is outside [0, 1] (pixel units; 1/255 = 0.00392)")
        if self.steps < 0 or self.step_size < 0:
            raise ZSBenchError(f"steps ({self.steps}) and step size ({self.step_size}) must not be negative")
        if self.precision not in PRECISIONS:
            raise ZSBenchError(f"unknown attack precision {self.precision!r}; available: {', '.join(PRECISIONS)}")

    @property
    def is_clean(self) -> bool:
        return self.name == "clean"

    def _entry(self) -> AttackEntry | None:
        return ATTACKS.get(self.name) if self.name in ATTACKS else None

    @property
    def label(self) -> str:
        """``PGD-10 L∞ ε=1/255``; attacks with a fixed schedule (AutoAttack) carry no step count."""
        if self.is_clean:
            return "Clean"
        norm = {"linf": "L∞", "l2": "L2"}[self.norm]
        entry = self._entry()
        name = entry.display if entry else self.name.upper()
        if entry is None or entry.default_steps is not None:
            name += f"-{self.steps}"
        label = f"{name} {norm} ε={fmt255(self.eps)}/255"
        return label if self.precision == "fp32" else f"{label} {self.precision}"

    @property
    def slug(self) -> str:
        if self.is_clean:
            return "clean"
        entry = self._entry()
        steps = "" if entry is not None and entry.default_steps is None else f"-steps{self.steps}"
        slug = f"{self.name}-{self.norm}-eps{fmt255(self.eps)}{steps}"
        return slug if self.precision == "fp32" else f"{slug}-{self.precision}"

    def settings(self) -> dict:
        """Everything that defines the attack, for the records."""
        if self.is_clean:
            return {"name": "clean"}
        d = asdict(self)
        d["eps_255"] = round(self.eps * 255, 6)
        d["step_size_255"] = round(self.step_size * 255, 6)
        entry = ATTACKS.get(self.name)
        d.update(entry.fixed_settings)
        d.update(entry.precision_settings.get(self.precision, {}))
        if self.precision != "fp32":
            d["precision_detail"] = entry.precision_notes.get(self.precision, PRECISION_NOTES[self.precision])
        return d


class Attack(ABC):
    """One attack at one threat: ``perturb`` maps images to adversarial images.

    Every attack (the registered ones and AutoAttack's Square component) is a subclass; the registry's
    ``AttackEntry.attack`` is the class, and ``AttackEntry.perturb`` makes one per threat.

    Args:
        threat: the attack setting (norm, eps, steps, step size, random start, precision).
    """

    def __init__(self, threat: Threat) -> None:
        self.threat = threat

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Adversarial images of ``x`` (B, C, H, W) in [0, 1] with labels ``y`` (B,): in the threat's eps-ball around
        ``x`` and in [0, 1], float32; ``seeds`` (one int per image) drive the random numbers. The model's train/eval
        mode and ``requires_grad`` flags are left as found."""


@dataclass(frozen=True)
class AttackEntry:
    """A registered attack: ``run(model, x, y, threats, seeds) -> {threat: robust mask}`` plus its fixed settings.

    Every attack takes images in [0, 1] (B, C, H, W), labels (B,), ``Threat.eps`` in [0, 1] pixel units and one int seed
    per image; it attacks the model in eval mode with frozen parameters and restores its train/eval mode and
    ``requires_grad`` flags. A point is robust only if the model classifies it correctly on its clean image and the
    attack does not fool it, so every robust mask implies clean correctness.

    Attributes:
        display: the name in labels (``PGD``, ``AutoAttack``).
        default_steps: iterations when the user gives none; ``None``: the attack fixes its own schedule and
            ``Threat.steps`` is not used (nor shown in the label).
        uses_step_size: whether ``Threat.step_size`` is used (APGD and AutoAttack adapt their own).
        precisions: the ``Threat.precision`` values it supports.
        reports: ``run`` accepts ``report=dict`` and fills it per threat slug with what ran and the per-component
            robust masks (``masks``: component -> bool tensor), which the evaluator stores in the record.
        attack: the :class:`Attack` subclass; ``perturb(model, x, y, threat, seeds)`` runs
            ``attack(threat).perturb(model, x, y, seeds)``: images in [0, 1] inside the threat's eps-ball around
            ``x``, with the same seeds (hence the same verdicts) as ``run``: the model misclassifies ``x_adv[i]``
            exactly where ``run`` calls point i not robust (the clean image where it is misclassified already), and
            classifies it correctly where ``run`` calls it robust.
        min_classes: the fewest classes the attack is defined for; ``undefined_why`` says why (APGD-T: 4).
        takes_clean: ``run`` accepts ``clean=`` (the per-image clean correctness, as a bool tensor on the images'
            device) and then skips its own clean forward; the evaluator, which has that mask already, passes it.
        precision_notes: what a precision means for this attack where ``PRECISION_NOTES`` (PGD's) does not say it
            (AutoAttack's fp16 keeps its own per-image losses); recorded as the attack's ``precision_detail``.
        precision_settings: ``fixed_settings`` values that a precision changes (PGD's fp16: a batch-mean loss), so the
            record never states a setting that did not run.
    """

    name: str
    description: str
    run: Callable
    fixed_settings: Mapping
    attack: type[Attack]
    display: str = ""
    default_steps: int | None = 10
    uses_step_size: bool = True
    precisions: tuple[str, ...] = ("fp32",)
    reports: bool = False
    min_classes: int = 1
    undefined_why: str = ""
    takes_clean: bool = False
    precision_notes: dict = field(default_factory=dict)
    precision_settings: dict = field(default_factory=dict)
    norms: tuple[str, ...] = NORMS

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: Threat, seeds: torch.Tensor
    ) -> torch.Tensor:
        """The attack's adversarial images for one threat (see ``Attack.perturb``)."""
        return self.attack(threat).perturb(model, x, y, seeds)

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise ZSBenchError(
                f"attack {self.name!r} runs in {', '.join(self.precisions)} only, not {precision}; "
                f"use --attack-precision {self.precisions[0]} or the pgd attack"
            )

    def check_norm(self, norm: str) -> None:
        if norm not in self.norms:
            raise ZSBenchError(
                f"attack {self.name!r} is defined for {', '.join(self.norms)} only, not {norm}; use --norm "
                f"{self.norms[0]}"
            )

    def undefined_for(self, n_classes: int) -> str | None:
        """Why the attack is undefined for a classifier with ``n_classes`` classes, or None when it is defined."""
        if n_classes >= self.min_classes:
            return None
        why = self.undefined_why or f"{self.display or self.name} needs at least {self.min_classes} classes"
        return f"{why}; this classifier has {n_classes}"


def require_precision(threats: list[Threat], allowed: tuple[str, ...]) -> None:
    """Refuse a threat whose precision the attack does not implement, rather than record it for another precision."""
    for t in threats:
        if t.precision not in allowed:
            raise ZSBenchError(
                f"attack {t.name!r} runs in {' or '.join(allowed)} only (got precision {t.precision!r}); "
                f"use {allowed[0]}"
            )


def _checked(attack: type[Attack], name: str) -> type[Attack]:
    """A plugin's attack class whose ``perturb`` keeps our contract whatever the plugin does: its images are checked
    to lie in the threat's eps-ball and the [0, 1] box (so no attack reports more robustness than its threat allows,
    nor less by stepping outside it), and a clean mistake is returned as the clean image."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        t = self.threat
        x = x.float()
        x_adv = attack.perturb(self, model, x, y, seeds)
        if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape or not bool(torch.isfinite(x_adv).all()):
            raise ZSBenchError(f"attack {name!r} returned no finite images of the input's shape {tuple(x.shape)}")
        x_adv = x_adv.float()
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if t.norm == "linf" else delta.norm(dim=1)
        if bool((size > t.eps * (1 + 1e-5) + 1e-6).any()) or x_adv.min() < 0 or x_adv.max() > 1:
            raise ZSBenchError(
                f"attack {name!r} returned images outside the {t.norm} ball of radius {t.eps:.6g} or the [0, 1] box: "
                "its perturb must project them"
            )
        with eval_mode_no_param_grad(model):
            clean = clean_correct(model, x, y)
        return torch.where(clean.view(-1, *([1] * (x.dim() - 1))), x_adv, x)

    return type(attack.__name__, (attack,), {"perturb": perturb, "__module__": attack.__module__})


def _run_perturb(attack: type[Attack]) -> Callable:
    """``AttackEntry.run`` of an attack known only by its ``perturb``: a point is robust where the model classifies
    the clean image and the attack's image correctly (fp32 forwards)."""

    def run(model, x, y, threats, seeds, *, clean=None):
        out = {}
        with eval_mode_no_param_grad(model):
            x = x.float()
            clean = clean_correct(model, x, y) if clean is None else clean.to(x.device, torch.bool)
            for t in threats:
                x_adv = attack(t).perturb(model, x, y, seeds)
                out[t] = clean & (clean_logits(model, x_adv).argmax(dim=1) == y)
        return out

    return run


def adopt_attack(name: str, obj: object) -> AttackEntry:
    """A plugin's :class:`Attack` subclass as a registry entry under the entry point's ``name``.

    The class says how it runs through class attributes: ``description`` (required), ``display``, ``default_steps``
    (None: it fixes its own iterations), ``uses_step_size``, ``precisions``, ``norms``, ``min_classes``,
    ``undefined_why`` and ``fixed_settings`` (what the record states besides the threat). See
    docs/adding_an_attack.md.
    """
    if not (isinstance(obj, type) and issubclass(obj, Attack)):
        raise PluginError(f"it names a {type(obj).__name__}, not a subclass of robustbench_zs.attacks.Attack")
    description = getattr(obj, "description", "")
    if not isinstance(description, str) or not description:
        raise PluginError(f"{obj.__name__} has no description (a class attribute: one line for zsbench list)")
    norms = tuple(getattr(obj, "norms", NORMS))
    precisions = tuple(getattr(obj, "precisions", ("fp32",)))
    if not norms or set(norms) - set(NORMS) or not precisions or set(precisions) - set(PRECISIONS):
        raise PluginError(f"{obj.__name__}: norms must be among {NORMS} and precisions among {PRECISIONS}")
    checked = _checked(obj, name)
    return AttackEntry(
        name=name,
        description=description,
        run=_run_perturb(checked),
        fixed_settings=dict(getattr(obj, "fixed_settings", {})),
        attack=checked,
        display=getattr(obj, "display", "") or obj.__name__,
        default_steps=getattr(obj, "default_steps", 10),
        uses_step_size=bool(getattr(obj, "uses_step_size", True)),
        precisions=precisions,
        min_classes=int(getattr(obj, "min_classes", 1)),
        undefined_why=getattr(obj, "undefined_why", ""),
        takes_clean=True,
        norms=norms,
    )


#: every attack: ours, then other packages' (entry points in the group ``robustbench_zs.attacks``)
ATTACKS: Registry[AttackEntry] = Registry("attack", group="robustbench_zs.attacks", adopt=adopt_attack)
