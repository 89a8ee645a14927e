"""Training losses of the full-encoder methods, as pure functions on tensors.

Notation (protocol.md section 2): ``z`` logits, ``p = softmax(z)``, ``x'`` the adversarial image, ``f`` the encoder
being trained and ``f0`` the frozen pre-trained one. Every function computes in float32 (inputs produced under
autocast are upcast), so the numbers do not depend on the training precision.

Reductions over the batch: ``"mean"`` divides the sum of the per-sample values by the batch size B, ``"sum"`` does
not (PMG-AFT's official code sums its KL terms, ``nn.KLDivLoss(reduction="sum")``, while its cross-entropy is a
mean), ``"none"`` returns the per-sample values (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ZSBenchError

#: Batch reductions accepted by the losses below ("none" keeps one value per image).
REDUCTIONS = ("mean", "sum", "none")

#: PMG-AFT KL directions: the paper's equations (= the code after 2024-05-29) or the code behind the paper's numbers.
KL_DIRECTIONS = ("current", "published")

#: PMG-AFT distances: KL (the method), and the ablations of the paper's tables 5, 12 and 13.
DISTANCES = ("kl", "l2_output", "l2_feature", "cosine_feature")


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ZSBenchError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")


def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """KL(softmax(p_logits) || softmax(q_logits)), summed over classes, then reduced over the batch.

    Per sample i: ``KL_i = sum_c p_ic * (log p_ic - log q_ic)`` with ``log p = log_softmax(p_logits)`` and
    ``log q = log_softmax(q_logits)`` (no log of a softmax, so large logits do not overflow and tiny probabilities
    do not give log 0). Then ``reduction``: ``"mean"`` = (1/B) sum_i KL_i, ``"sum"`` = sum_i KL_i, ``"none"`` = (KL_i).

    ``torch.nn.KLDivLoss(reduction="sum")(log_softmax(q_logits), softmax(p_logits))`` equals
    ``kl_div(p_logits, q_logits, "sum")``: the loss's target is the first argument here. Gradients flow into both.
    """
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    per_sample = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return _reduce(per_sample, reduction)


def _l2_output(a_logits: torch.Tensor, b_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample squared Euclidean distance between the softmax outputs: sum_c (p_a,c - p_b,c)^2."""
    diff = F.softmax(a_logits.float(), dim=-1) - F.softmax(b_logits.float(), dim=-1)
    return diff.pow(2).sum(dim=-1)


def _l2_feature(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample squared Euclidean distance between unnormalized embeddings: sum_d (a_d - b_d)^2 (FARE's distance)."""
    return (a.float() - b.float()).pow(2).sum(dim=-1)


def _cosine_feature(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine distance between embeddings: 1 - <a, b> / (|a| |b|), in [0, 2]."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def pmg_aft_loss(
    logits_adv: torch.Tensor,
    logits_clean: torch.Tensor | None,
    logits_frozen_adv: torch.Tensor | None,
    y: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    direction: str = "current",
    reduction: str = "mean",
    distance: str = "kl",
    feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PMG-AFT's loss (Wang et al., CVPR 2024): ``CE(z(x'), y) + alpha * D_robust + beta * D_natural``.

    Args:
        logits_adv: z(x'), the trained model's logits on the adversarial images (B, C).
        logits_clean: z(x), its logits on the clean images (B, C).
        logits_frozen_adv: z0(x'), the frozen pre-trained model's logits on the adversarial images (B, C).
        y: labels (B,).
        alpha, beta: weights of the robust (guidance by the pre-trained model) and natural (clean-vs-adversarial)
            terms; ``beta = 0`` is the paper's ablation without the natural term (it is then left out of the loss).
        direction: for ``distance="kl"``: ``"current"`` (the paper's equations, the official code after its commit of
            2024-05-29): D_robust = KL(p0(x') || p(x')), D_natural = KL(p(x) || p(x')); ``"published"`` (the code
            that produced the paper's numbers): D_robust = KL(p(x') || p0(x')), D_natural = KL(p(x') || p(x)).
            The other distances are symmetric, so the direction does not change them.
        reduction: how each D term is reduced over the batch, ``"mean"`` or ``"sum"`` (the official code's
            ``KLDivLoss(reduction="sum")``: per sample, B times the weight alpha and beta say). The cross-entropy
            is always the batch mean. The same reduction applies to every distance.
        distance: ``"kl"`` (the method), or an ablation (paper tables 5, 12, 13), each a per-sample value reduced
            as above:

            - ``"l2_output"``: squared Euclidean distance between the softmax outputs, sum_c (p_a,c - p_b,c)^2;
            - ``"l2_feature"``: squared Euclidean distance between the UNNORMALIZED image embeddings,
              sum_d (f_a,d - f_b,d)^2 (on L2-normalized embeddings it would be exactly twice the cosine distance);
            - ``"cosine_feature"``: cosine distance 1 - cos(f_a, f_b) between the image embeddings.

            The pairs are those of the KL terms: robust = (x' under f, x' under f0), natural = (x' under f, x under f).
        feats: ``(f(x'), f(x), f0(x'))``, the unnormalized image embeddings (B, D); required by the feature
            distances, ignored otherwise (the logits other than ``logits_adv`` may then be None).

    Nothing is detached (as the official code): gradients reach the model through both arguments of every term.

    Returns:
        ``(loss, terms)`` with ``terms = {"ce", "robust", "natural"}``: the cross-entropy and the two reduced D terms
        before weighting (detached, for logging); ``loss = ce + alpha * robust + beta * natural``.
    """
    if direction not in KL_DIRECTIONS:
        raise ZSBenchError(f"unknown KL direction {direction!r}; choose one of {', '.join(KL_DIRECTIONS)}")
    if reduction not in ("mean", "sum"):
        raise ZSBenchError(f"unknown PMG-AFT reduction {reduction!r}; choose mean or sum")
    ce = F.cross_entropy(logits_adv.float(), y)
    if distance == "kl":
        if direction == "current":
            robust = kl_div(logits_frozen_adv, logits_adv, reduction)
            natural = kl_div(logits_clean, logits_adv, reduction)
        else:
            robust = kl_div(logits_adv, logits_frozen_adv, reduction)
            natural = kl_div(logits_adv, logits_clean, reduction)
    elif distance == "l2_output":
        robust = _reduce(_l2_output(logits_adv, logits_frozen_adv), reduction)
        natural = _reduce(_l2_output(logits_adv, logits_clean), reduction)
    elif distance in ("l2_feature", "cosine_feature"):
        if feats is None or len(feats) != 3:
            raise ZSBenchError(f"PMG-AFT distance {distance!r} needs feats=(f(x'), f(x), f0(x'))")
        f_adv, f_clean, f0_adv = feats
        dist = _l2_feature if distance == "l2_feature" else _cosine_feature
        robust = _reduce(dist(f_adv, f0_adv), reduction)
        natural = _reduce(dist(f_adv, f_clean), reduction)
    else:
        raise ZSBenchError(f"unknown PMG-AFT distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    loss = ce + alpha * robust
    if beta != 0:
        loss = loss + beta * natural
    return loss, {"ce": ce.detach(), "robust": robust.detach(), "natural": natural.detach()}


def fare_loss_per_sample(emb_adv: torch.Tensor, emb_frozen_clean: torch.Tensor) -> torch.Tensor:
    """FARE's per-image loss ``||f(x') - f0(x)||_2^2`` on UNNORMALIZED embeddings (B, D) -> (B,); the attack's loss.

    Squared, summed over the embedding dimension, not divided by it (Schlarmann et al., ICML 2024).
    """
    if emb_adv.shape != emb_frozen_clean.shape:
        raise ZSBenchError(f"FARE: embeddings of shapes {tuple(emb_adv.shape)} and {tuple(emb_frozen_clean.shape)}")
    return (emb_adv.float() - emb_frozen_clean.float()).pow(2).sum(dim=-1)


def fare_loss(emb_adv: torch.Tensor, emb_frozen_clean: torch.Tensor) -> torch.Tensor:
    """FARE's training loss: the batch mean of :func:`fare_loss_per_sample`, (1/B) sum_i ||f(x'_i) - f0(x_i)||_2^2."""
    return fare_loss_per_sample(emb_adv, emb_frozen_clean).mean()
