"""Toy test-time defenses for the tests: small, with a known answer to "does the adaptive attack see the defense?"."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_zs.methods.base import MethodConfig
from robustbench_zs.methods.defense import Defense, DefenseMethod


@dataclass(frozen=True)
class DihedralConfig(MethodConfig):
    transforms: int = 8  # the first k of the 8 flips and transposes of the square image


class RandomDihedral(Defense):
    """Classifies each image under one of the square's flips/transposes drawn at random: a perturbation made for the
    undefended model rarely survives the transform it meets (non-adaptive robustness is high), while an attack that
    averages over the draws (EOT) finds perturbations that fool every transform."""

    randomized = True

    def defend(self, x: torch.Tensor) -> torch.Tensor:
        t = x.transpose(2, 3)
        views = [x, x.flip(3), x.flip(2), x.flip(2).flip(3), t, t.flip(3), t.flip(2), t.flip(2).flip(3)]
        k = self.config.transforms
        pick = torch.randint(0, k, (len(x),), generator=self.generator(x.device), device=x.device)
        return self.classifier(torch.stack(views[:k])[pick, torch.arange(len(x), device=x.device)])


class ToyDihedral(DefenseMethod):
    id = "toy_dihedral"
    summary = "a toy randomized defense (tests only)"
    Config = DihedralConfig
    defense = RandomDihedral


@dataclass(frozen=True)
class QuantizeConfig(MethodConfig):
    levels: int = 8


class Quantize(Defense):
    """Rounds pixels to a few levels before classifying: its gradient is zero almost everywhere, so an adaptive
    attack without BPDA cannot move, while a transfer attack from the undefended model may still succeed (the
    gradient masking that ``adaptive_above_non_adaptive`` flags)."""

    def defend(self, x: torch.Tensor) -> torch.Tensor:
        n = self.config.levels - 1
        return self.classifier(torch.round(x * n) / n)


class ToyQuantize(DefenseMethod):
    id = "toy_quantize"
    summary = "a toy gradient-masking defense (tests only)"
    Config = QuantizeConfig
    defense = Quantize
    eot_samples = 1


@dataclass(frozen=True)
class PurifyConfig(MethodConfig):
    steps: int = 2
    lr: float = 0.05


class GradientPurifier(Defense):
    """A smooth inference-time optimization in pixel space: a few gradient steps that lower the entropy of the
    prediction. Its steps are differentiable, so the unrolled gradient (second order) must match finite
    differences."""

    inference_optimization = True

    def defend(self, x: torch.Tensor) -> torch.Tensor:
        unroll = self.unrolled(x)
        z = x
        for _ in range(self.config.steps):
            v = z if unroll else z.detach().requires_grad_(True)
            p = torch.softmax(self.classifier(v), dim=-1)
            entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
            z = v - self.config.lr * self.inner_grad(entropy, v, unroll)
        return self.classifier(z)


class ToyPurifier(DefenseMethod):
    id = "toy_purifier"
    summary = "a toy smooth purifier (tests only)"
    Config = PurifyConfig
    defense = GradientPurifier
