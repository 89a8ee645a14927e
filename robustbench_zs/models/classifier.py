"""The zero-shot classifier that every evaluation and attack sees: pixels in [0, 1] in, logits out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..profiles import NORMALIZATIONS, HeadKnobs


class ZeroShotClassifier(nn.Module):
    """logits = tau * cos(f(normalize(resize(x))), T_c).

    Args:
        visual: the image tower; maps normalized images (B, 3, H, W) to embeddings (B, D).
        head: text embeddings of the classes, (C, D), L2-normalized; kept as a constant buffer.
        image_size: the tower's input size; inputs of another size are resized (bicubic) inside ``forward``,
            so attacks always perturb the image at its native resolution.
        mean, std: normalization constants applied inside ``forward``.
        logit_scale: tau.

    ``forward`` takes images in [0, 1], shape (B, 3, h, w), any h, w, and returns logits (B, C).
    """

    def __init__(
        self,
        visual: nn.Module,
        head: torch.Tensor,
        image_size: tuple[int, int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        logit_scale: float,
        resize: str = "bicubic",
    ) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("head", head.detach().clone(), persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.image_size = tuple(image_size)
        self.logit_scale = float(logit_scale)
        self.resize = resize

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        head: torch.Tensor,
        image_size: tuple[int, int],
        knobs: HeadKnobs,
        encoder: nn.Module | None = None,
    ):
        """The classifier of an open_clip ``model`` under ``knobs``, on ``encoder`` (default: its image tower)."""
        mean, std = NORMALIZATIONS[knobs.normalization]
        visual = model.visual if encoder is None else encoder
        return cls(visual, head, image_size, mean, std, knobs.resolve_logit_scale(model), resize=knobs.resize)

    @property
    def num_classes(self) -> int:
        return int(self.head.shape[0])

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            down = x.shape[-2] > self.image_size[0] or x.shape[-1] > self.image_size[1]
            x = F.interpolate(x, size=self.image_size, mode=self.resize, align_corners=False, antialias=down)
        return (x - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalized image embeddings (B, D) of pixels in [0, 1]."""
        return self.visual(self.preprocess(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalized image embeddings (B, D)."""
        return F.normalize(self.embed(x), dim=-1)

    def logits_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        """The logits of unnormalized embeddings (B, D): ``forward(x)`` is ``logits_from_embeddings(embed(x))``.

        For losses that need both the embeddings and the logits of the same images, without a second forward.
        """
        return self.logit_scale * F.normalize(emb, dim=-1) @ self.head.to(emb.dtype).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_embeddings(self.embed(x))
