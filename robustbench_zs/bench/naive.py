"""The baseline of ``zsbench bench``: PMG-AFT (and TeCoA) training and PGD evaluation computed the way the official
code computes them, so the benchmark can say how much faster this package's path is on the same work.

What makes the official code slow, reproduced here on purpose (the numbers it computes stay ours, see below):

* every logit re-encodes every class prompt with the text tower (``encode_text`` of C tokenized prompts of 77
  tokens) at every forward: each attack step, the adversarial and the clean forward of the model being trained,
  and the forward of the pre-trained model;
* no image tower is frozen: the pre-trained copy runs with autograd on and every image-tower parameter of both
  CLIP models requires gradients, and every backward, the attack's included, is ``loss.backward()`` over all of
  them (the official attack reads ``delta.grad`` after it); the optimizer holds only the trained image tower;
* the clean and the adversarial images go through the model in separate forwards.

The text towers are re-encoded but frozen here (their parameters do not require gradients, so no backward runs
through them). Gradients into them would cost far more: on ViT-B/32 one ``encode_text`` of 200 prompts with
gradients holds 7 GB of activations and its backward takes as long as its forward (30 s on two CPU cores), and the
three such forwards of a PMG-AFT step do not fit a 24 GB machine. The speed-ups measured against this baseline
are therefore lower bounds of those against code that leaves the text tower trainable.

What is kept equal to this package's path, so both compute the same numbers: the objective (the attack maximizes
the per-image cross-entropy summed over the batch; the official code's batch mean has the same sign, hence the
same steps), the random starts (one generator per image), the loss functions, the optimizer, and the precision.
The tests check that the first training loss and the PGD verdicts agree with this package's on the same batch.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.core import unit_noise
from ..errors import ZSBenchError
from ..methods import Method, Recipe
from ..models import NORMALIZATIONS, HeadKnobs

#: The methods with a naive baseline (the official PMG-AFT code and the TeCoA code it grew from).
NAIVE_METHODS = ("pmg_aft", "tecoa")

#: The changes that turn the naive training step into this package's, one at a time (``NaiveTraining(fixes=...)``;
#: ``benchmarks/pmg_aft_ladder.py`` measures each): the prompts encoded once; the pre-trained model under
#: ``no_grad`` and without gradients; the attack's backward into the perturbation
#: alone (``autograd.grad``), not into every weight.
FIXES = ("text_once", "frozen_no_grad", "attack_input_grad")


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class NaiveClassifier:
    """Zero-shot logits of a whole open_clip model with the prompts encoded again at every call.

    ``logits(x) = tau * cos(encode_image(normalize(x)), encode_text(tokens))``: the same function as
    :class:`~robustbench_zs.models.ZeroShotClassifier` with a one-template head, computed from scratch.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokens: torch.Tensor,
        knobs: HeadKnobs,
        image_size: tuple[int, int],
        text_once: bool = False,
    ) -> None:
        self.clip = clip
        self.tokens = tokens
        mean, std = NORMALIZATIONS[knobs.normalization]
        device = tokens.device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.scale = knobs.resolve_logit_scale(clip)
        self.image_size = tuple(image_size)
        self.text = None
        if text_once:  # the ``text_once`` fix: a constant head, as this package's cached one
            with torch.no_grad():
                self.text = F.normalize(clip.encode_text(tokens), dim=-1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            raise ZSBenchError(f"naive baseline: images must be {self.image_size}, got {tuple(x.shape[-2:])}")
        image = self.clip.encode_image((x - self.mean) / self.std)
        text = self.text if self.text is not None else F.normalize(self.clip.encode_text(self.tokens), dim=-1)
        return self.scale * F.normalize(image, dim=-1) @ text.T


def _image_tower_trains(clip: nn.Module) -> nn.Module:
    """Gradients for every image-tower parameter (as a model nobody froze), none for the text tower."""
    clip.requires_grad_(False)
    clip.visual.requires_grad_(True)
    return clip


def _clear_grads(*models: nn.Module) -> None:
    for m in models:
        for p in m.parameters():
            p.grad = None


def _linf_step(x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor, eps: float, step: float) -> torch.Tensor:
    delta = (delta + step * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1) - x


class NaiveTraining:
    """One training step of ``method`` (``pmg_aft`` with a logit distance, or ``tecoa``) as the official code.

    Args:
        method: the configured method (its loss function and config are used as they are).
        clip: the pre-trained open_clip model; copies are made on ``device`` (the one trained, the pre-trained one).
        tokens: the tokenized class prompts (C, context length).
        knobs: the head knobs (normalization, logit scale) of the classifier, as the engine's training profile sets.
        fixes: which of :data:`FIXES` to apply (none: the official code's way; all: this package's computation,
            with the clean and adversarial forwards still separate).
    """

    def __init__(
        self,
        method: Method,
        clip: nn.Module,
        tokens: torch.Tensor,
        recipe: Recipe,
        knobs: HeadKnobs,
        image_size: tuple[int, int],
        precision: str,
        device: torch.device,
        fixes: tuple[str, ...] = (),
    ) -> None:
        if set(fixes) - set(FIXES):
            raise ZSBenchError(f"unknown fixes {sorted(set(fixes) - set(FIXES))}; choose from {', '.join(FIXES)}")
        if method.id not in NAIVE_METHODS or getattr(method.config, "distance", "kl") not in ("kl", "l2_output"):
            raise ZSBenchError(f"the naive baseline exists for {', '.join(NAIVE_METHODS)} (logit distances) only")
        tokens = tokens.to(device)
        self.method, self.recipe, self.precision, self.fixes = method, recipe, precision, set(fixes)
        self.model = _image_tower_trains(copy.deepcopy(clip).to(device)).train()
        self.original = _image_tower_trains(copy.deepcopy(clip).to(device)).train() if method.id == "pmg_aft" else None
        if "frozen_no_grad" in self.fixes and self.original is not None:
            self.original.requires_grad_(False)
        once = "text_once" in self.fixes
        self.classify = NaiveClassifier(self.model, tokens, knobs, image_size, once)
        self.classify0 = NaiveClassifier(self.original, tokens, knobs, image_size, once) if self.original else None
        params = list(self.model.visual.parameters())
        if recipe.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
        else:
            self.opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)

    def attack(self, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """The recipe's training PGD; each step a full ``loss.backward()`` into every image-tower weight."""
        r = self.recipe
        eps, step, steps = r.train_eps_255 / 255, r.train_step_size_255 / 255, r.train_steps
        if eps == 0 or steps == 0:
            return x.detach()
        self.model.eval()
        delta = unit_noise(tuple(x.shape[1:]), seeds, x.device, "linf") * eps
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            with _autocast(x.device, self.precision):
                loss = F.cross_entropy(self.classify(x + delta).float(), y, reduction="sum")
            if "attack_input_grad" in self.fixes:
                (grad,) = torch.autograd.grad(loss, delta)
            else:
                loss.backward()
                grad = delta.grad
            with torch.no_grad():
                delta = _linf_step(x, delta, grad, eps, step)
        self.model.train()
        return (x + delta).detach()

    def loss(self, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        x_adv = self.attack(x, y, seeds)
        with _autocast(x.device, self.precision):
            logits_adv = self.classify(x_adv)
            if self.method.id == "tecoa":
                return F.cross_entropy(logits_adv.float(), y)
            logits_clean = self.classify(x)
            if "frozen_no_grad" in self.fixes:
                with torch.no_grad():
                    logits0_adv = self.classify0(x_adv)
            else:
                logits0_adv = self.classify0(x_adv)  # autograd on, as the official code
            loss, _ = self.method.combine(logits_adv, logits_clean, logits0_adv, y)
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Attack, loss, backward through everything, optimizer step; returns the loss (detached)."""
        _clear_grads(*(m for m in (self.model, self.original) if m is not None))
        loss = self.loss(x, y, seeds)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


class NaivePGD:
    """L-inf PGD of the evaluation with the prompts encoded again at every step and gradients into every weight.

    Same threat, random start, step rule and verdict as :func:`robustbench_zs.attacks.pgd.pgd_single` in fp32 (a
    point is robust if classified correctly at every iterate and at the last one).
    """

    def __init__(
        self, clip: nn.Module, tokens: torch.Tensor, knobs: HeadKnobs, image_size: tuple[int, int], device: torch.device
    ) -> None:
        self.model = _image_tower_trains(copy.deepcopy(clip).to(device)).eval()
        self.classify = NaiveClassifier(self.model, tokens.to(device), knobs, image_size)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor, eps: float, step: float, steps: int
    ) -> torch.Tensor:
        _clear_grads(self.model)
        delta = unit_noise(tuple(x.shape[1:]), seeds, x.device, "linf") * eps
        delta = (x + delta.clamp(-eps, eps)).clamp(0, 1) - x
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = self.classify(x + delta)
            robust &= logits.argmax(dim=1) == y
            F.cross_entropy(logits.float(), y, reduction="sum").backward()
            with torch.no_grad():
                delta = _linf_step(x, delta, delta.grad, eps, step)
        with torch.no_grad():
            robust &= self.classify(x + delta).argmax(dim=1) == y
        return robust
