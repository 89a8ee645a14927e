"""``tecoa``: text-guided contrastive adversarial training (Mao et al., ICLR 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .base import Method, Recipe, Step, register_method


@register_method
class TeCoA(Method):
    """TeCoA: ``x' = PGD(x)`` maximizing the per-image cross-entropy of the model being trained, loss ``CE(z(x'), y)``.

    The zero-shot logits are ``tau * cos(f(x), T_c)`` against the frozen text embeddings, so this is the
    text-guided contrastive loss of the paper. Recipe: protocol.md section 3 (SGD lr 5e-5, momentum 0.9, weight
    decay 0, warm-up 1000, 10 epochs, batch 256, training PGD eps 1/255, 2 steps of 1/255). The head knobs are the
    training profile's: ``standard`` has TeCoA's own code knobs (CLIP normalization, tau = 100); ``paper`` trains it
    with the PMG-AFT code's (ImageNet normalization, tau = 1), under which that paper evaluated every row.

    Subclasses (e.g. visual prompts) change the encoder hooks only: the loss uses nothing but ``step.model``.
    """

    id = "tecoa"
    name = "TeCoA"
    summary = "adversarial fine-tuning of the image encoder with cross-entropy on PGD examples against the text head"
    paper = "Mao et al., Understanding Zero-Shot Adversarial Robustness for Large-Scale Models, ICLR 2023"
    recipe = Recipe()

    def attack_loss(self, step: Step) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training attack's objective: per-image cross-entropy of the model being trained."""
        return lambda x_adv: F.cross_entropy(step.model(x_adv).float(), step.y, reduction="none")

    def loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_adv = step.attack(self.attack_loss(step))
        ce = F.cross_entropy(step.model(x_adv).float(), step.y)
        return ce, {"ce": ce.detach()}
