"""Test-time defenses: methods that leave the weights alone and change inference, and how they are attacked.

A test-time defense is a :class:`DefenseMethod`: it trains nothing, and its :class:`Defense` wraps the zero-shot
classifier (pixels in [0, 1] -> logits), running its own steps at inference: counterattacks, purification, prompt
tuning. The engine evaluates every defense twice by default:

- **adaptive** (the default, and the number the leaderboard ranks): the attack differentiates through the defense's
  whole inference, its optimization steps unrolled (:meth:`Defense.inner_grad` keeps their graph when an attack asks
  for the input gradient), with BPDA only where a step has no useful gradient (each such step is named in
  :attr:`Defense.bpda`), and with expectation over transformation for a randomized defense (:class:`EOT`: the attack
  sees the log of the mean softmax over ``eot_samples`` draws of the defense's randomness);
- **non-adaptive** (the protocol of the defenses' own papers, kept as a flagged variant): the attack is computed on
  the undefended classifier, then the defense classifies the attacked image (TTC's and R-TPT's protocol); or, for a
  defense whose paper attacked it through its steps without differentiating their directions (CLIPure's code), the
  same held attack (:class:`HeldSteps`, ``published_attack = "held_steps"``).

In both, the verdict is the deployed defense's: one draw of its randomness classifies the clean image and the
attacked one, and a point is robust only if both are correct (Croce et al., ICML 2022, "Evaluating the Adversarial
Robustness of Adaptive Test-time Defenses").

Randomness: a defense draws from :meth:`Defense.generator`, which the evaluator reseeds per batch and per use (clean
pass, each attack, each verdict), so a record is reproduced bit for bit by the same batch size and seed; it depends on
the batch size (the draws of one batch are one stream), which is therefore part of a randomized defense's record key.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import ZSBenchError
from .base import Method

#: the evaluations of a test-time defense: ``adaptive`` (ranked) and ``non_adaptive`` (the papers' protocol, flagged)
DEFENSE_EVALUATIONS = ("adaptive", "non_adaptive")

#: what a defense's non-adaptive evaluation attacks (its paper's protocol): the undefended classifier (a transfer
#: attack), or the defense with its inner steps' gradients held constant (CLIPure's code: a masked gradient)
PUBLISHED_ATTACKS = ("undefended", "held_steps")

#: EOT samples of the literature's adaptive evaluations of randomized defenses: AutoAttack's ``version='rand'``
#: (APGD with ``eot_iter=20``), as Croce et al. (ICML 2022) evaluated the randomized test-time defenses
LITERATURE_EOT_SAMPLES = 20


class Defense(nn.Module):
    """A zero-shot classifier under a test-time defense: pixels in [0, 1] (B, 3, H, W) in, logits (B, C) out.

    Subclasses implement :meth:`defend` and declare what the adaptive attack must know:

    Class attributes:
        randomized: the defense draws random numbers at inference (the adaptive attack takes an expectation over them).
        inference_optimization: the defense optimizes something per input at inference (its steps are unrolled).
        bpda: steps whose gradient the adaptive attack replaces, step name -> the surrogate its backward pass uses
            (short and stable: it keys the records; empty: every step is differentiated as it runs).
        second_order: the unrolled steps differentiate through a gradient (``inner_grad`` with its graph kept); False
            for steps whose gradient enters only through a sign (zero derivative), which need no second order.

    Args:
        classifier: the undefended classifier (``ZeroShotClassifier``: ``embed``, ``logits_from_embeddings``,
            ``logit_scale``, ``head``); its parameters stay untouched.
        config: the defense method's config (its knobs), or None.
    """

    randomized: ClassVar[bool] = False
    inference_optimization: ClassVar[bool] = False
    bpda: ClassVar[dict[str, str]] = {}
    second_order: ClassVar[bool] = True

    def __init__(self, classifier: nn.Module, config=None) -> None:
        super().__init__()
        self.classifier = classifier
        self.config = config
        self.held = False  # HeldSteps: the steps' gradients are constants to the attack
        self._seed = 0
        self._generator: torch.Generator | None = None

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def logit_scale(self) -> float:
        return self.classifier.logit_scale

    def reseed(self, seed: int) -> None:
        """Start the defense's random stream anew from ``seed`` (the evaluator: per batch and per use)."""
        self._seed = int(seed) % (2**63)
        self._generator = None

    def generator(self, device: torch.device) -> torch.Generator:
        """The defense's random stream on ``device`` (seeded by :meth:`reseed`; advances with every draw)."""
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._seed)
        return self._generator

    @staticmethod
    def unrolled(x: torch.Tensor) -> bool:
        """Whether this forward is differentiated with respect to its input (an adaptive attack's): the defense's
        inner steps then keep their graph, so the attack's gradient runs through them."""
        return torch.is_grad_enabled() and x.requires_grad

    def inner_grad(self, value: torch.Tensor, wrt: torch.Tensor, unroll: bool) -> torch.Tensor:
        """The gradient of a defense step's scalar ``value`` with respect to its variable ``wrt``, with its own graph
        kept when ``unroll`` (second-order terms reach the attack), else a constant.

        Under :class:`HeldSteps` (a defense whose own paper attacked it so) it is a constant even when unrolled: the
        attack's gradient then runs through the steps' other operations but not through their directions."""
        if self.held:
            (grad,) = torch.autograd.grad(value, wrt, retain_graph=True)  # the graph stays for the attack's backward
            return grad.detach()
        (grad,) = torch.autograd.grad(value, wrt, create_graph=unroll)
        return grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unroll = self.unrolled(x)
        # the defense's own steps need gradients even under an attack's no_grad checks; an unrolled second-order step
        # needs attention kernels with a double backward (the fused CPU and GPU kernels have none): the math one
        kernels = sdpa_kernel([SDPBackend.MATH]) if unroll and self.second_order else contextlib.nullcontext()
        with torch.enable_grad(), kernels:
            out = self.defend(x if unroll else x.detach())
        return out if unroll else out.detach()

    def defend(self, x: torch.Tensor) -> torch.Tensor:
        """The defended logits of ``x``; differentiable in ``x`` when :meth:`unrolled` says so."""
        raise NotImplementedError


class EOT(nn.Module):
    """A randomized defense as its expectation: log of the mean softmax over ``samples`` draws of its randomness.

    Every attack (ours and plugins') differentiates this instead of one draw, so its gradient is the expectation
    over transformation (Athalye et al., ICML 2018): for the cross-entropy, ``-log E[p_y]``'s gradient
    ``E[grad p_y] / E[p_y]``. The draws run as one batch of ``samples`` copies (memory grows with ``samples``; lower
    ``--batch-size`` for large ones). One sample is the defense itself.
    """

    def __init__(self, defense: Defense, samples: int) -> None:
        super().__init__()
        if samples < 1:
            raise ZSBenchError(f"--eot-samples must be at least 1, got {samples}")
        self.defense, self.samples = defense, int(samples)

    @property
    def num_classes(self) -> int:
        return self.defense.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.samples == 1:
            return self.defense(x)
        logits = self.defense(x.repeat(self.samples, *([1] * (x.dim() - 1))))
        logp = F.log_softmax(logits.float(), dim=-1).view(self.samples, len(x), -1)
        return torch.logsumexp(logp, dim=0) - math.log(self.samples)


class HeldSteps(nn.Module):
    """A defense as the official evaluation of a defense such as CLIPure attacked it: through the defense, its inner
    steps' gradients taken without their own graph (constants to the attack): the published, gradient-masked
    protocol, kept as the non-adaptive evaluation of a defense whose :attr:`DefenseMethod.published_attack` is
    ``held_steps``."""

    def __init__(self, defense: Defense) -> None:
        super().__init__()
        self.defense = defense

    @property
    def num_classes(self) -> int:
        return self.defense.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.defense.held = True
        try:
            return self.defense(x)
        finally:
            self.defense.held = False


def stream_seed(batch_seed: int, use: str) -> int:
    """The seed of one use of a defense's randomness in one batch (``use``: ``clean``, ``attack:<slug>``...)."""
    return (int(batch_seed) * 1_000_003 + zlib.crc32(use.encode())) % (2**63)


class DefenseMethod(Method):
    """A registered test-time defense: trains nothing; :meth:`build_defense` wraps the classifier.

    Class attributes (besides :class:`Method`'s):
        defense: the :class:`Defense` subclass.
        eot_samples: the EOT samples of the adaptive evaluation of a randomized defense (at least the literature's,
            :data:`LITERATURE_EOT_SAMPLES`); 1 for a deterministic one.
        published: what the defense's paper reports under its own (non-adaptive) evaluation, for the docs and the
            tests: ``{"source": ..., "numbers": {...}}``.
        published_attack: what the paper's own evaluation attacked, which the ``non_adaptive`` evaluation repeats
            (:data:`PUBLISHED_ATTACKS`): ``undefended`` (the undefended classifier; TTC, R-TPT) or ``held_steps``
            (the defense, its steps' gradients held constant: CLIPure's code).
    """

    trains: ClassVar[str] = "nothing"
    defense: ClassVar[type[Defense]] = Defense
    eot_samples: ClassVar[int] = LITERATURE_EOT_SAMPLES
    published_attack: ClassVar[str] = "undefended"
    published: ClassVar[dict] = {}

    def build_defense(self, classifier: nn.Module, embed_text: Callable[[list[str]], torch.Tensor]) -> Defense:
        """The defended classifier of ``classifier`` under this method's config.

        Args:
            classifier: the undefended zero-shot classifier.
            embed_text: ``embed_text(classnames)`` -> (len(classnames), D) L2-normalized text embeddings of those
                class names under the run's prompt templates (as the head was built; cached), for a defense that needs
                other texts than the classes (CLIPure's blank prompt).
        """
        return self.defense(classifier, self.config)

    @classmethod
    def defense_block(cls) -> dict:
        """What a record says of the defense: ``randomized``, ``inference_optimization`` and the BPDA steps."""
        d = cls.defense
        return {
            "name": cls.id,
            "randomized": bool(d.randomized),
            "inference_optimization": bool(d.inference_optimization),
            "bpda": dict(d.bpda),
        }

    @classmethod
    def evaluation_block(cls, mode: str, eot_samples: int | None = None) -> dict:
        """The record's ``evaluation`` block of one evaluation mode (``adaptive`` or ``non_adaptive``)."""
        if mode not in DEFENSE_EVALUATIONS:
            raise ZSBenchError(f"unknown defense evaluation {mode!r}; choose from {', '.join(DEFENSE_EVALUATIONS)}")
        adaptive = mode == "adaptive"
        randomized = cls.defense.randomized
        samples = (eot_samples or cls.eot_samples) if adaptive and randomized else 1
        return {
            "adaptive": adaptive,
            "attack_on": "defense" if adaptive else cls.published_attack,
            "eot_samples": samples,
            "bpda": dict(cls.defense.bpda) if adaptive else {},
        }

    def depends_on_batch(self) -> bool:
        """Whether the defense's outputs for an image depend on the batch it is evaluated in (its random draws
        follow the batches; or its steps look at the whole batch), which then keys its records."""
        return self.defense.randomized


def is_defense(method: Method | type[Method]) -> bool:
    """Whether ``method`` (a class or an instance) is a test-time defense."""
    cls = method if isinstance(method, type) else type(method)
    return issubclass(cls, DefenseMethod)
