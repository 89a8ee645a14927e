"""``tga_zsr``: text-guided attention for zero-shot robustness (Yu et al., NeurIPS 2024, zhyblue424/TGA-ZSR).

docs/tga_zsr.md lists what was checked against the official code, what could not be checked against the paper, and
the official code's quirks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from ..errors import ZSBenchError
from .base import Method, MethodConfig, Recipe, Step, register_method
from .tecoa import TeCoA

#: Distances between two batches of flattened attention maps (the official ``--Distance_metric``).
MAP_DISTANCES = ("l2", "l1", "cos")
#: How the tower's output tokens are normalized before the dot product with the class text.
TOKEN_NORMS = ("official", "per_token")


@dataclass(frozen=True)
class TGAZSRConfig(MethodConfig):
    """TGA-ZSR's options; the defaults are the official code's (TGA-ZSR.py, commit 5f2b31c).

    Attributes:
        alpha: weight of the attention refinement term ``D(A(x'), A0(x))`` (official ``--Alpha`` 0.08).
        beta: weight of the attention-based model constraint ``D(A(x), A0(x))`` (official ``--Beta`` 0.05).
        distance: ``l2`` (per image, the Euclidean norm of the difference of the flattened maps, averaged over the
            batch; not squared), ``l1`` (the mean absolute difference over every pixel of every map) or ``cos``
            (the batch mean of one minus the cosine similarity of the flattened maps).
        token_norm: ``official`` (each embedding dimension divided by its norm over the tokens, as the official
            code's ``norm(dim=1)`` on the (B, tokens, D) output does) or ``per_token`` (each token scaled to unit
            length, which makes the map a cosine similarity to the class text).
    """

    alpha: float = 0.08
    beta: float = 0.05
    distance: str = "l2"
    token_norm: str = "official"

    def validate(self) -> None:
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ZSBenchError(f"TGA-ZSR {key} must be a finite number >= 0, got {value!r}")
        if self.distance not in MAP_DISTANCES:
            raise ZSBenchError(f"TGA-ZSR distance must be one of {', '.join(MAP_DISTANCES)}, got {self.distance!r}")
        if self.token_norm not in TOKEN_NORMS:
            raise ZSBenchError(f"TGA-ZSR token_norm must be one of {', '.join(TOKEN_NORMS)}, got {self.token_norm!r}")


# --- the ViT's tokens ----------------------------------------------------------------------------------------------


def vit_unsupported(visual: nn.Module) -> str | None:
    """Why :func:`tower_tokens` cannot read ``visual``'s output tokens, or None when it can.

    Supported: open_clip's ``VisionTransformer`` pooling by its class token, with ``ln_post`` applied to every token,
    a projection and no patch dropout (the towers of OpenAI's and LAION's CLIP ViTs).
    """
    if not isinstance(visual, VisionTransformer):
        return f"its image tower is a {type(visual).__name__}, not an open_clip VisionTransformer"
    if getattr(visual, "attn_pool", None) is not None:
        return "its ViT pools with attention, so its tokens are not per patch"
    if getattr(visual, "pool_type", "tok") != "tok":
        return f"its ViT pools by {getattr(visual, 'pool_type', '?')!r}, not by the class token"
    if getattr(visual, "final_ln_after_pool", False):
        return "its ViT applies ln_post after pooling, so its patch tokens have no final norm"
    if getattr(visual, "proj", None) is None:
        return "its ViT has no output projection, so its tokens are not in the text embedding space"
    if not isinstance(getattr(visual, "patch_dropout", nn.Identity()), nn.Identity):
        return "its ViT drops patches, so its tokens do not form the patch grid"
    return None


def tower_tokens(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Every output token of an open_clip ViT tower for normalized images ``x``: (B, 1 + patches, D).

    The tower's own forward, written out with its submodules, keeping all tokens: patch embedding, class token,
    positional embedding, ``ln_pre``, the transformer, then ``ln_post`` and the projection on every token (what the
    official code's modified OpenAI ``VisionTransformer.forward`` returns). Token 0 is ``visual(x)``.
    """
    h = visual.conv1(x)
    h = h.reshape(h.shape[0], h.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(h.dtype).view(1, 1, -1).expand(h.shape[0], -1, -1)
    h = torch.cat([cls, h], dim=1) + visual.positional_embedding.to(h.dtype)
    h = visual.patch_dropout(h)
    h = visual.ln_pre(h)
    if getattr(visual.transformer, "batch_first", False):
        h = visual.transformer(h)
    else:  # open_clip releases whose transformer runs sequence-first
        h = visual.transformer(h.permute(1, 0, 2)).permute(1, 0, 2)
    return visual.ln_post(h) @ visual.proj


def classifier_tokens(clf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:func:`tower_tokens` of pixels in [0, 1] through a ``ZeroShotClassifier``'s preprocessing (resize, normalize)."""
    return tower_tokens(clf.visual, clf.preprocess(x))


def text_guided_attention(
    tokens: torch.Tensor, text: torch.Tensor, size: tuple[int, int], token_norm: str = "official"
) -> torch.Tensor:
    """The text-guided attention maps of a batch, flattened: (B, H * W) with values in [0, 1].

    Args:
        tokens: a ViT's output tokens (B, 1 + gh * gw, D), class token first (:func:`tower_tokens`).
        text: the L2-normalized text embedding of each image's class, (B, D).
        size: (H, W), the tower's input size: the maps are upsampled to it.
        token_norm: see :class:`TGAZSRConfig`.

    The patch tokens' dot products with the class text, min-max normalized over the patches of each image,
    reshaped to the patch grid and upsampled bilinearly (``align_corners=False``, as ``F.interpolate``'s default
    in the official code). Computed in float32 whatever the autocast.
    """
    t = tokens.float()
    t = F.normalize(t, dim=1) if token_norm == "official" else F.normalize(t, dim=-1)
    scores = torch.einsum("bpd,bd->bp", t[:, 1:], text.float())
    lo, hi = scores.amin(dim=1, keepdim=True), scores.amax(dim=1, keepdim=True)
    # the official code divides by (max - min) with no epsilon; here a map whose patches all score the same is 0
    # where the official one would be NaN, and every other map is the same
    scores = (scores - lo) / (hi - lo).clamp_min(torch.finfo(scores.dtype).tiny)
    h, w = size
    patches = scores.shape[1]
    gh = round(math.sqrt(patches * h / w)) if h and w else 0
    gw = patches // gh if gh else 0
    if gh * gw != patches:
        raise ZSBenchError(f"TGA-ZSR: {patches} patch tokens do not form a grid for a {h}x{w} input")
    maps = F.interpolate(scores.view(-1, 1, gh, gw), size=(h, w), mode="bilinear", align_corners=False)
    return maps.flatten(1)


def logits_and_attention(
    clf: nn.Module, x: torch.Tensor, y: torch.Tensor, token_norm: str = "official"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits (B, C) of a ``ZeroShotClassifier`` and the attention maps (B, H * W) of each image's class ``y``,
    from one forward of its tower: the logits come from the class token, as ``clf(x)`` computes them."""
    tokens = classifier_tokens(clf, x)
    maps = text_guided_attention(tokens, clf.head[y], tuple(clf.image_size), token_norm)
    return clf.logits_from_embeddings(tokens[:, 0]), maps


def map_distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """The official code's distance between two batches of flattened maps (B, N), a scalar (see TGAZSRConfig)."""
    if a.shape != b.shape:
        raise ZSBenchError(f"TGA-ZSR: attention maps of shapes {tuple(a.shape)} and {tuple(b.shape)} do not compare")
    if distance == "l2":
        return torch.linalg.vector_norm(a - b, dim=1).mean()
    if distance == "l1":
        return (a - b).abs().mean()
    if distance == "cos":
        return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()
    raise ZSBenchError(f"TGA-ZSR distance must be one of {', '.join(MAP_DISTANCES)}, got {distance!r}")


# --- the method ----------------------------------------------------------------------------------------------------


@register_method
class TGAZSR(Method):
    """TGA-ZSR: ``CE(z(x'), y) + alpha * D(A(x'), A0(x)) + beta * D(A(x), A0(x))``, alpha 0.08, beta 0.05, D = L2.

    ``x'`` is the training PGD maximizing the per-image cross-entropy of the model being trained (as TeCoA's).
    ``A(.)`` is the text-guided attention map of the model being trained and ``A0(.)`` that of the frozen
    pre-trained model (computed without gradients: a constant target, as in the official code where the frozen
    copy is never updated): the output tokens of the ViT after ``ln_post`` and the projection, normalized
    (``token_norm``), the patch tokens' dot products with the normalized text embedding of the image's true class,
    min-max normalized per image, upsampled bilinearly to the tower's input size (:func:`text_guided_attention`).
    The maps enter only the loss; the cross-entropy and ``A(x')`` come from one forward of ``x'`` (the class token
    gives the logits), and ``A(x)`` from the same forward where the engine joins the two batches (``Step.pair``).
    ``alpha = 0`` skips ``A(x')``, ``beta = 0`` the clean forward, both 0 is TeCoA under this recipe.

    The defaults are the official code's: distance ``l2`` (the norm per image, not squared, averaged over the
    batch) and ``token_norm = official`` (each embedding dimension divided by its norm over the 1 + P tokens, a
    quirk of ``norm(dim=1)`` on a (B, tokens, D) tensor); ``per_token`` is the per-token normalization the text
    suggests. The paper's text could not be compared here, so ``official_options`` is empty.

    Recipe: the official defaults: SGD lr 1e-4 (TeCoA and PMG-AFT use 5e-5), momentum 0.9, weight decay 0,
    warm-up 1000 steps then cosine, 10 epochs, batch 128, training PGD L-inf eps 1/255, 2 steps of 1/255 from a
    uniform start clipped to the image (``pgd``). The official code ran CLIP normalization, logit scale 100 (the
    learned one of OpenAI's weights, clamped at 100), the prompt "This is a photo of a {}" and fp16 autocast with a
    gradient scaler: the ``standard`` training profile has its head knobs, ``--precision fp16 --attack-reduction
    mean --prompts paper`` its precision, attack and prompt (the ``paper`` profile is PMG-AFT's code: ImageNet
    normalization and tau = 1).

    Only open_clip ViTs that pool by the class token are supported (:func:`vit_unsupported`): the method is defined
    on the patch tokens of a ViT, so a ResNet is refused.
    """

    id = "tga_zsr"
    name = "TGA-ZSR"
    summary = (
        "adversarial fine-tuning with CE(x') plus text-guided attention maps of x' and x pulled to the frozen "
        "model's map of x"
    )
    paper = (
        "Yu, Zhang, Xu: Text-Guided Attention is All You Need for Zero-Shot Robustness in Vision-Language Models, "
        "NeurIPS 2024 (arXiv:2410.21802)"
    )
    Config = TGAZSRConfig
    recipe = Recipe(lr=1e-4, batch_size=128)
    needs_frozen = True

    def check_model(self, model: nn.Module, arch: str) -> None:
        visual = getattr(model, "visual", model)
        why = vit_unsupported(visual)
        if why is None:
            why = _tokens_disagree(visual)
        if why is not None:
            raise ZSBenchError(f"tga_zsr needs an open_clip ViT image tower (e.g. --arch ViT-B-32); {arch}: {why}")

    attack_loss = TeCoA.attack_loss  # the training attack's objective: TeCoA's, as the official code

    def loss(self, step: Step) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        if step.frozen is None:
            raise ZSBenchError("TGA-ZSR needs the frozen pre-trained classifier (Step.frozen is None)")
        x_adv = step.attack(self.attack_loss(step))
        model, y = step.model, step.y
        if cfg.beta > 0:
            tok_adv, tok_clean = step.pair(lambda z: classifier_tokens(model, z), x_adv, step.x)
        else:
            tok_adv, tok_clean = classifier_tokens(model, x_adv), None
        ce = F.cross_entropy(model.logits_from_embeddings(tok_adv[:, 0]).float(), y)
        loss, terms = ce, {"ce": ce.detach()}
        if cfg.alpha == 0 and cfg.beta == 0:
            return loss, terms
        text, size = model.head[y], tuple(model.image_size)
        with torch.no_grad():
            target = text_guided_attention(classifier_tokens(step.frozen, step.x), text, size, cfg.token_norm)
        if cfg.alpha > 0:
            am1 = map_distance(text_guided_attention(tok_adv, text, size, cfg.token_norm), target, cfg.distance)
            loss = loss + cfg.alpha * am1
            terms["am1"] = am1.detach()
        if tok_clean is not None:
            am2 = map_distance(text_guided_attention(tok_clean, text, size, cfg.token_norm), target, cfg.distance)
            loss = loss + cfg.beta * am2
            terms["am2"] = am2.detach()
        return loss, terms


def _tokens_disagree(visual: nn.Module) -> str | None:
    """Why :func:`tower_tokens`' class token is not ``visual``'s own output on a probe image, or None when it is."""
    try:
        param = next(visual.parameters())
    except StopIteration:
        return "its ViT has no parameters"
    size = tuple(getattr(visual, "image_size", (224, 224)))
    gen = torch.Generator().manual_seed(0)
    probe = torch.rand((1, 3, *size), generator=gen).to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        want = visual(probe)
        want = want[0] if isinstance(want, tuple) else want
        got = tower_tokens(visual, probe)[:, 0]
    if got.shape != want.shape or not torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-4):
        return "its tokens, read with its submodules, do not reproduce its output (an unsupported open_clip version?)"
    return None
