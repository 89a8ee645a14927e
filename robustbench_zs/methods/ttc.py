"""``ttc``: test-time counterattacks (Xing et al., CVPR 2025, "CLIP is Strong Enough to Fight Back").

What the official code does (``Sxing2/CLIP-Test-time-Counterattacks``, ``code/test_time_counterattack.py``,
``tau_thres_weighted_counterattacks``), which this defense follows knob for knob:

1. one uniform random start ``delta_0`` in [-eps_ttc, eps_ttc] per pixel (eps_ttc = 4/255), the image kept in [0, 1];
2. the sensitivity ``tau = ||f(x + delta_0) - f(x)|| / ||f(x)||`` of the unnormalized image embedding ``f`` (after
   the projection, before the L2 normalization);
3. ``steps`` = 2 sign-gradient steps of ``step_size`` = 1/255 that maximize the summed squared embedding drift
   ``||f(x + delta) - f(x)||^2``, each projected to the eps_ttc ball and the image box; every iterate is kept;
4. the counterattack ``Delta = sum_k w_k delta_k`` with ``w_k`` proportional to ``exp(beta * k)`` (beta = 2) where
   ``tau < tau_thres`` (0.2: an image whose embedding barely moves under noise is taken for adversarial), and
   ``Delta = delta_0`` (the random start alone) where it is not;
5. the zero-shot logits of ``x + Delta``.

The official code runs under float16 autocast; here the defense runs in fp32 (the attacks' precision policy), a
difference recorded in docs/test_time_defenses.md. The paper's evaluation attacks the undefended CLIP (PGD-10, eps
1/255), then applies the counterattack: our ``non_adaptive`` evaluation.

Adaptive evaluation: ``delta_0`` is random, so the attack averages over its draws (EOT); the sign steps and the
``tau`` gate are piecewise constant, so their exact gradient is zero almost everywhere and the attack differentiates
the final forward at ``x + Delta`` with the counterattack held; the gate alone gets a BPDA surrogate (a sigmoid of
``(tau - tau_thres) / 0.02`` in the backward pass only), so the attack sees that raising ``tau`` above the threshold
switches the counterattack off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ZSBenchError
from .base import MethodConfig, register_method
from .defense import Defense, DefenseMethod

#: the temperature of the BPDA surrogate of the tau gate (backward pass only; the forward keeps the hard gate)
GATE_TEMPERATURE = 0.02


@dataclass(frozen=True)
class TTCConfig(MethodConfig):
    """The counterattack's knobs; defaults are the official code's (``TTC.sh``, the paper's Table 1).

    Attributes:
        eps_255: the counterattack's L-inf budget, in 1/255 (4).
        steps: counterattack steps (2; 0 is the paper's random-noise baseline "RN").
        step_size_255: the counterattack's step, in 1/255 (1).
        tau_thres: the sensitivity threshold below which an image is counterattacked (0.2).
        beta: the weight of later counterattack steps, ``w_k ~ exp(beta * k)`` (2).
    """

    eps_255: float = 4.0
    steps: int = 2
    step_size_255: float = 1.0
    tau_thres: float = 0.2
    beta: float = 2.0

    def validate(self) -> None:
        for key in ("eps_255", "step_size_255", "tau_thres", "beta"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ZSBenchError(f"ttc {key} must be a finite number >= 0, got {value!r}")
        if self.eps_255 > 255 or self.step_size_255 > 255:
            raise ZSBenchError(f"ttc eps_255 and step_size_255 are in 1/255 and at most 255, got {self.eps_255}")
        if not isinstance(self.steps, int) or not 0 <= self.steps <= 100:
            raise ZSBenchError(f"ttc steps must be a whole number from 0 to 100, got {self.steps!r}")


class Counterattack(Defense):
    """The test-time counterattack of :mod:`robustbench_zs.methods.ttc` around a zero-shot classifier."""

    randomized = True
    inference_optimization = True
    second_order = False  # the steps enter through sign(grad), whose derivative is zero: no gradient of a gradient
    # the gate's backward: d/dtau of this sigmoid (its forward stays the hard switch); see the module docstring
    bpda = {"tau_gate": f"sigmoid((tau_thres - tau) / {GATE_TEMPERATURE})"}

    def defend(self, x: torch.Tensor) -> torch.Tensor:
        cfg: TTCConfig = self.config
        eps, alpha = cfg.eps_255 / 255, cfg.step_size_255 / 255
        unroll = self.unrolled(x)
        embed = self.classifier.embed
        noise = torch.empty_like(x).uniform_(-eps, eps, generator=self.generator(x.device))
        delta = (x + noise).clamp(0, 1) - x
        anchor = embed(x)
        anchor_const = anchor.detach()
        norm = anchor.norm(dim=-1).clamp_min(1e-12)
        tau = (embed(x + delta) - anchor).norm(dim=-1) / norm
        deltas = [delta]
        for _ in range(cfg.steps):
            d = delta.detach().requires_grad_(True)
            drift = (embed(x.detach() + d) - anchor_const).pow(2).sum()
            grad = self.inner_grad(drift, d, unroll=False)
            # sign steps: piecewise constant in x (their exact gradient is zero almost everywhere)
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
            deltas.append(delta)
        k = torch.arange(len(deltas), device=x.device, dtype=torch.float32)
        counter = torch.softmax(cfg.beta * k, dim=0)  # w_k ~ exp(beta k), normalized
        stacked = torch.stack(deltas)  # (K, B, C, H, W)
        combined = torch.einsum("k,kbchw->bchw", counter.to(stacked.dtype), stacked)
        gate = (tau < cfg.tau_thres).to(x.dtype)  # 1: counterattack, 0: the random start alone
        if unroll:  # BPDA of the gate: the hard value forward, a sigmoid's gradient backward
            soft = torch.sigmoid((cfg.tau_thres - tau) / GATE_TEMPERATURE)
            gate = gate + soft - soft.detach()
        g = gate.view(-1, *([1] * (x.dim() - 1)))
        final = g * combined + (1 - g) * deltas[0]
        return self.classifier.logits_from_embeddings(embed(x + final))


@register_method
class TTC(DefenseMethod):
    """Test-time counterattacks: each image is pushed, before classification, along the direction that moves its
    CLIP embedding most (a 2-step, 4/255 sign-gradient ascent on the embedding drift), where its embedding is
    suspiciously insensitive to random noise (``tau < 0.2``); the weights are the pre-trained CLIP's, untouched.
    See the module docstring for each step and for how it is attacked adaptively."""

    id = "ttc"
    name = "TTC"
    summary = "test-time counterattacks on zero-shot CLIP (a defense at inference: the weights stay as loaded)"
    paper = (
        "Xing et al., CLIP is Strong Enough to Fight Back: Test-time Counterattacks towards Zero-shot Adversarial "
        "Robustness of CLIP, CVPR 2025 (arXiv 2503.03613)"
    )
    Config = TTCConfig
    defense = Counterattack
    published = {
        "source": "the authors' CVPR 2025 poster, Table 1 (PGD-10 L-inf eps 1/255 on the undefended CLIP ViT-B/32, "
        "then the counterattack; the code's TTC.sh settings)",
        "average_16": {"robust": 39.17, "clean": 59.75},
        "cifar10": {"robust": 28.75, "clean": 81.18},
        "imagenet": {"robust": 38.41, "clean": 49.39},
    }
