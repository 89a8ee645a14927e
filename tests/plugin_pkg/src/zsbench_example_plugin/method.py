"""``clean_adv_mix``: cross-entropy on a mix of clean and adversarial images (an example method, not a paper's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustbench_zs.errors import ZSBenchError
from robustbench_zs.methods import Method, MethodConfig, Recipe, Step


@dataclass(frozen=True)
class MixConfig(MethodConfig):
    #: the weight of the adversarial cross-entropy; 1 - mix goes to the clean one
    mix: float = 0.5

    def validate(self) -> None:
        if not 0 <= self.mix <= 1:
            raise ZSBenchError(f"clean_adv_mix: mix must lie in [0, 1], got {self.mix}")


class CleanAdvMix(Method):
    """``(1 - mix) * CE(z(x), y) + mix * CE(z(x'), y)`` with ``x'`` the recipe's training PGD against the model.

    The class calls itself ``mix``; users know it by its entry point's name, ``clean_adv_mix``.
    """

    id = "mix"
    name = "Clean/adversarial mix"
    summary = "example plugin: cross-entropy on a weighted mix of clean and PGD images"
    paper = "(an example, no paper)"
    Config = MixConfig
    recipe = Recipe()

    def loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_adv = step.attack(lambda xa: F.cross_entropy(step.model(xa).float(), step.y, reduction="none"))
        clean = F.cross_entropy(step.model(step.x).float(), step.y)
        adv = F.cross_entropy(step.model(x_adv).float(), step.y)
        mix = self.config.mix
        return (1 - mix) * clean + mix * adv, {"clean": clean.detach(), "adv": adv.detach()}
