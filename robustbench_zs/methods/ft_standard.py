"""``ft_standard``: fine-tune the image encoder with cross-entropy on clean images (no attack)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Method, Recipe, Step, register_method


@register_method
class FTStandard(Method):
    """Standard fine-tuning, the baseline of the TeCoA and PMG-AFT papers: ``CE(z(x), y)`` on clean images.

    Recipe: protocol.md section 3 (SGD lr 5e-5, momentum 0.9, warm-up 1000, 10 epochs, batch 256) with no training
    attack (eps 0, 0 steps, so the record says so): the baseline is TeCoA without its attack. The head knobs come
    from the training profile (``paper``: ImageNet normalization, tau = 1, as the PMG-AFT code trained every row of
    its tables). The loss never calls ``step.attack``.
    """

    id = "ft_standard"
    name = "FT-Standard"
    summary = "fine-tune the image encoder with cross-entropy on clean images (no adversarial examples)"
    paper = "baseline of Mao et al., Understanding Zero-Shot Adversarial Robustness for Large-Scale Models, ICLR 2023"
    recipe = Recipe(train_eps_255=0.0, train_steps=0, train_step_size_255=0.0)
    needs_frozen = False

    def loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = F.cross_entropy(step.model(step.x).float(), step.y)
        return ce, {"ce": ce.detach()}
