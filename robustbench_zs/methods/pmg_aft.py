"""``pmg_aft``: pre-trained model guided adversarial fine-tuning (Wang et al., CVPR 2024)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ZSBenchError
from .base import Method, MethodConfig, Recipe, Step, register_method
from .losses import DISTANCES, KL_DIRECTIONS, pmg_aft_loss

FEATURE_DISTANCES = ("l2_feature", "cosine_feature")


@dataclass(frozen=True)
class PMGAFTConfig(MethodConfig):
    """PMG-AFT's options; the defaults are the paper's equations.

    Attributes:
        alpha: weight of the robust term D(x' under the model, x' under the pre-trained model) (paper: 1).
        beta: weight of the natural term D(x', x), both under the model (paper: 1; 0 is the ablation of tables
            4, 10, 11).
        kl_direction: ``current`` (the paper's equations and the official code after 2024-05-29) or ``published``
            (the code that produced the paper's numbers); see :func:`~robustbench_zs.methods.losses.pmg_aft_loss`.
        kl_reduction: ``mean`` (the paper's equations) or ``sum`` (the official code: summed over the batch).
        distance: ``kl`` (the method), or the ablations ``l2_output``, ``l2_feature``, ``cosine_feature``
            (tables 5, 12, 13).
    """

    alpha: float = 1.0
    beta: float = 1.0
    kl_direction: str = "current"
    kl_reduction: str = "mean"
    distance: str = "kl"

    def validate(self) -> None:
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ZSBenchError(f"PMG-AFT {key} must be a finite number >= 0, got {value!r}")
        if self.kl_direction not in KL_DIRECTIONS:
            raise ZSBenchError(
                f"PMG-AFT kl_direction must be one of {', '.join(KL_DIRECTIONS)}, got {self.kl_direction!r}"
            )
        if self.kl_reduction not in ("mean", "sum"):
            raise ZSBenchError(f"PMG-AFT kl_reduction must be mean or sum, got {self.kl_reduction!r}")
        if self.distance not in DISTANCES:
            raise ZSBenchError(f"PMG-AFT distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")


@register_method
class PMGAFT(Method):
    """PMG-AFT: ``CE(z(x'), y) + alpha * KL(p0(x') || p(x')) + beta * KL(p(x) || p(x'))``, alpha = beta = 1.

    ``x'`` is the training PGD maximizing the per-image cross-entropy of the model being trained; ``p0`` comes from
    the frozen pre-trained classifier (computed without gradients); nothing else is detached.

    Defaults follow the paper's equations: KL direction ``current``, KL terms averaged over the batch. The official
    code's behaviour, which produced the paper's numbers (protocol.md section 4), is one option pair away::

        --set kl_direction=published --set kl_reduction=sum

    i.e. KL(p(x') || p0(x')) and KL(p(x') || p(x)), summed over the batch while the cross-entropy is averaged. These
    are the method's ``official_options``: the ``paper`` training profile uses them unless the options are given.
    ``distance`` selects the paper's ablations (``l2_output``, ``l2_feature``, ``cosine_feature``; the feature ones
    use the unnormalized image embeddings ``model.embed``), ``beta = 0`` drops the natural term.

    Recipe: protocol.md section 3 (SGD lr 5e-5, momentum 0.9, warm-up 1000, 10 epochs, batch 256, training PGD eps
    1/255, 2 steps of 1/255). PMG-AFT's code knobs (ImageNet normalization, tau = 1, fp16 autocast, ...) are the
    ``paper`` training profile's.

    Subclasses (visual prompts) change the encoder hooks only: the loss uses nothing but ``step.model``,
    ``step.frozen`` and their ``embed`` for the feature distances.
    """

    id = "pmg_aft"
    name = "PMG-AFT"
    summary = "adversarial fine-tuning guided by frozen CLIP: CE(x') + KL to the pre-trained model + KL clean-vs-adv"
    paper = (
        "Wang et al., Pre-trained Model Guided Fine-Tuning for Zero-Shot Adversarial Robustness, CVPR 2024 "
        "(arXiv 2401.04350)"
    )
    Config = PMGAFTConfig
    recipe = Recipe()
    # PMG_AFT.py as published (before its 2024-05-29 commit), which produced the paper's numbers
    official_options = {"kl_direction": "published", "kl_reduction": "sum"}
    needs_frozen = True

    def attack_loss(self, step: Step) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training attack's objective: per-image cross-entropy of the model being trained."""
        return lambda x_adv: F.cross_entropy(step.model(x_adv).float(), step.y, reduction="none")

    def loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        if step.frozen is None:
            raise ZSBenchError("PMG-AFT needs the frozen pre-trained classifier (Step.frozen is None)")
        x_adv = step.attack(self.attack_loss(step))
        if cfg.distance in FEATURE_DISTANCES:
            # the logits come from the same embeddings: tau * cos(f(x'), T_c), as step.model(x_adv) computes them
            feats_adv, feats_clean = step.pair(step.model.embed, x_adv, step.x)
            logits_adv = step.model.logits_from_embeddings(feats_adv)
            with torch.no_grad():
                feats0_adv = step.frozen.embed(x_adv)
            loss, terms = self.combine(logits_adv, None, None, step.y, feats=(feats_adv, feats_clean, feats0_adv))
        else:
            # p(x') and p(x) under the model being trained: one forward of both batches where that changes nothing
            logits_adv, logits_clean = step.pair(step.model, x_adv, step.x)
            with torch.no_grad():
                logits0_adv = step.frozen(x_adv)
            loss, terms = self.combine(logits_adv, logits_clean, logits0_adv, step.y)
        global_batch = step.extras.get("global_batch", len(step.x))
        if cfg.kl_reduction == "sum" and global_batch != len(step.x):
            # Under torchrun each process holds a share of the global batch and the engine weighs its (mean) loss
            # by that share; a term summed over the batch must then count global/local times to stay the sum over
            # the global batch, so the update does not depend on the number of processes.
            ce = F.cross_entropy(logits_adv.float(), step.y)
            loss = ce + (loss - ce) * (global_batch / len(step.x))
        return loss, terms

    def combine(
        self,
        logits_adv: torch.Tensor,
        logits_clean: torch.Tensor | None,
        logits0_adv: torch.Tensor | None,
        y: torch.Tensor,
        feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:func:`~robustbench_zs.methods.losses.pmg_aft_loss` under this method's config."""
        cfg = self.config
        return pmg_aft_loss(
            logits_adv,
            logits_clean,
            logits0_adv,
            y,
            alpha=cfg.alpha,
            beta=cfg.beta,
            direction=cfg.kl_direction,
            reduction=cfg.kl_reduction,
            distance=cfg.distance,
            feats=feats,
        )
