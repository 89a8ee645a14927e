"""``twins``: Two-WIng NormaliSation fine-tuning (Liu, Xu, Ji, Chan, CVPR 2023, arXiv 2303.11135).

TWINS fine-tunes a backbone with BatchNorm as two networks that share every weight but their BatchNorm layers: the
*frozen* wing normalizes with the pre-training population means and variances, which never change, and the
*adaptive* wing is the ordinary BatchNorm (batch statistics in training, running statistics updated). Facts from
the official code (ziquanliu/CVPR2023-TWINS, ``TWINS_*/robustness/imagenet_models/resnet.py``, ``train-TWINS-AT.py``,
``robustness/model_utils.py``, ``train.sh``):

* ``MixBatchNorm2d`` is a ``BatchNorm2d`` (the adaptive wing) holding a ``FixBatchNorm2d`` ``main_bn`` (the frozen
  wing: ``F.batch_norm`` with ``training=False`` always, so its statistics are used and never updated). The
  checkpoint's BN tensors are copied into both, so the wings start identical; each wing has its *own* affine
  weight and bias and both are trained (the optimizer takes ``model.parameters()``). Convolutions and every other
  layer are shared.
* Training ("mix" status, file names ``two_diff_batch``): the adversarial batch is split in halves; the first half
  goes through the frozen wing, the second through the adaptive wing, and the loss is
  ``lambda_twins * CE(frozen half) + CE(adaptive half)``. ``lambda_twins`` (gamma here) is 1.0 in the CIFAR script,
  0.4 in the Caltech-256 script and 0.3 by default in ``argument.py``; this package uses 1.0.
* The training attack runs with the model in eval mode, where the network uses the adaptive wing ("target" status)
  with its running statistics; evaluation (``model.eval()``) also uses the adaptive wing.

This implementation: every ``nn.BatchNorm2d`` of the image tower becomes a :class:`TwinBatchNorm2d`; the loss
attacks the adaptive wing (the engine's attack puts the model in eval mode, so running statistics), then runs the
adversarial batch through both wings as the code does (``batch="split"``) or the whole adversarial batch through
each wing (``batch="full"``, twice the compute). The head knobs are the training profile's, the training attack
always runs in eval mode (``train_attack_mode``, as the official code), and the recipe is protocol.md section 3's: TWINS itself fine-tunes supervised ImageNet ResNets with a new linear head and
has no zero-shot recipe.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ZSBenchError
from .base import Method, MethodConfig, Recipe, Step, register_method

#: Which wing a :class:`TwinBatchNorm2d` runs: one of them, or the first half of the batch frozen, the rest adaptive.
TWIN_MODES = ("adaptive", "frozen", "split")


class TwinBatchNorm2d(nn.Module):
    """A pre-trained ``BatchNorm2d`` as two wings (TWINS' ``MixBatchNorm2d``).

    Attributes:
        adaptive: the original module: batch statistics in train mode (updating its running statistics), running
            statistics in eval mode; its weight and bias are trained.
        frozen: a copy made at construction: always normalizes with the pre-trained running statistics, which never
            change; its own weight and bias (initialized to the pre-trained ones) are trained.
        mode: ``adaptive`` (default; evaluation), ``frozen``, or ``split`` (first half of the batch through the
            frozen wing, the rest through the adaptive wing; TWINS' training forward).
    """

    def __init__(self, bn: nn.BatchNorm2d, mode: str = "adaptive") -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise ZSBenchError("twins needs BatchNorm layers with running statistics (track_running_stats=True)")
        self.adaptive = bn
        self.frozen = copy.deepcopy(bn)
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in TWIN_MODES:
            raise ValueError(f"TwinBatchNorm2d mode must be one of {TWIN_MODES}, got {value!r}")
        self._mode = value

    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        f = self.frozen
        return F.batch_norm(x, f.running_mean, f.running_var, f.weight, f.bias, False, 0.0, f.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode == "adaptive":
            return self.adaptive(x)
        if self._mode == "frozen":
            return self.forward_frozen(x)
        half = x.shape[0] // 2
        return torch.cat([self.forward_frozen(x[:half]), self.adaptive(x[half:])], dim=0)

    def extra_repr(self) -> str:
        return f"mode={self._mode}"


def twin_layers(module: nn.Module) -> list[TwinBatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, TwinBatchNorm2d)]


@contextlib.contextmanager
def twin_mode(module: nn.Module, mode: str) -> Iterator[None]:
    """Run every :class:`TwinBatchNorm2d` under ``module`` in ``mode`` inside the block, then restore their modes."""
    layers = twin_layers(module)
    before = [m.mode for m in layers]
    for m in layers:
        m.mode = mode
    try:
        yield
    finally:
        for m, old in zip(layers, before, strict=True):
            m.mode = old


def make_twins(visual: nn.Module, mode: str = "adaptive") -> int:
    """Replace every ``nn.BatchNorm2d`` under ``visual`` (in place) by a :class:`TwinBatchNorm2d`; returns how many.

    BatchNorms already inside a twin are left alone, so calling it twice changes nothing the second time.
    """
    targets = []
    inside_twin = set()
    for name, m in visual.named_modules():
        if isinstance(m, TwinBatchNorm2d):
            inside_twin.update(id(c) for c in m.modules())
        elif isinstance(m, nn.BatchNorm2d) and id(m) not in inside_twin and name:
            targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = visual.get_submodule(parent_name) if parent_name else visual
        setattr(parent, child, TwinBatchNorm2d(getattr(parent, child), mode=mode))
    return len(targets)


@dataclass(frozen=True)
class TwinsConfig(MethodConfig):
    """TWINS' options.

    Attributes:
        gamma: weight of the frozen wing's cross-entropy (``lambda_twins``: 1.0 in the official CIFAR script, 0.4 for
            Caltech-256, 0.3 as ``argument.py``'s default); the adaptive wing's has weight 1.
        batch: ``split`` (official: first half of the adversarial batch through the frozen wing, second half
            through the adaptive wing) or ``full`` (the whole adversarial batch through each wing).
        eval_wing: the wing the trained encoder uses at evaluation (official: ``adaptive``).
    """

    gamma: float = 1.0
    batch: str = "split"
    eval_wing: str = "adaptive"

    def validate(self) -> None:
        if not (isinstance(self.gamma, (int, float)) and math.isfinite(self.gamma) and self.gamma >= 0):
            raise ZSBenchError(f"twins gamma must be a finite number >= 0, got {self.gamma!r}")
        if self.batch not in ("split", "full"):
            raise ZSBenchError(f"twins batch must be split or full, got {self.batch!r}")
        if self.eval_wing not in ("adaptive", "frozen"):
            raise ZSBenchError(f"twins eval_wing must be adaptive or frozen, got {self.eval_wing!r}")


@register_method
class TWINS(Method):
    """TWINS: ``gamma * CE(frozen wing, x') + CE(adaptive wing, x')``, for image towers with BatchNorm (RN50).

    ``x'`` is the training PGD against the adaptive wing (per-image cross-entropy; the engine runs the attack in
    eval mode, so the adaptive wing's running statistics). With ``batch="split"`` the first half of ``x'`` goes
    through the frozen wing and the second half through the adaptive wing (in train mode: batch statistics), each
    cross-entropy averaged over its half. Everything in the image tower is trained, both wings' BN affine
    parameters included; the frozen wing's statistics never change. Checkpoints hold the whole encoder state
    (both wings).
    """

    id = "twins"
    name = "TWINS"
    summary = (
        "adversarial fine-tuning of a BatchNorm backbone as two wings: frozen pre-trained BN statistics, adaptive BN"
    )
    paper = (
        "Liu et al., TWINS: A Fine-Tuning Framework for Improved Transferability of Adversarial Robustness and "
        "Generalization, CVPR 2023"
    )
    Config = TwinsConfig
    recipe = Recipe()
    train_attack_mode = "eval"  # the official TWINS code attacks in eval mode (adaptive wing, running statistics)

    def check_model(self, model: nn.Module, arch: str) -> None:
        visual = getattr(model, "visual", model)
        if not any(isinstance(m, nn.BatchNorm2d) for m in visual.modules()):
            raise ZSBenchError(f"twins needs a backbone with BatchNorm layers (e.g. --arch RN50); {arch} has none")

    def build_encoder(self, model: nn.Module) -> nn.Module:
        visual = model.visual
        make_twins(visual, mode=self.config.eval_wing)
        if not twin_layers(visual):
            raise ZSBenchError(
                f"twins needs a backbone with BatchNorm layers (e.g. --arch RN50); {type(visual).__name__} has none"
            )
        return visual

    def attack_loss(self, step: Step) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training attack's objective: per-image cross-entropy of the adaptive wing."""
        return lambda x_adv: F.cross_entropy(step.model(x_adv).float(), step.y, reduction="none")

    def loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        model, y = step.model, step.y
        with twin_mode(model, "adaptive"):
            x_adv = step.attack(self.attack_loss(step))
        if cfg.batch == "split":
            if y.shape[0] < 2:
                raise ZSBenchError("twins splits each batch between its two wings: use at least 2 images per process")
            half = y.shape[0] // 2
            with twin_mode(model, "split"):
                logits = model(x_adv).float()
            ce_frozen = F.cross_entropy(logits[:half], y[:half])
            ce_adaptive = F.cross_entropy(logits[half:], y[half:])
        else:
            with twin_mode(model, "frozen"):
                ce_frozen = F.cross_entropy(model(x_adv).float(), y)
            with twin_mode(model, "adaptive"):
                ce_adaptive = F.cross_entropy(model(x_adv).float(), y)
        loss = cfg.gamma * ce_frozen + ce_adaptive
        return loss, {"ce_frozen": ce_frozen.detach(), "ce_adaptive": ce_adaptive.detach()}
