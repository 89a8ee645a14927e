"""The ViT patch embedding as one matrix product.

open_clip's ``VisionTransformer`` embeds patches with ``nn.Conv2d(3, width, kernel_size=p, stride=p)``: the patches
do not overlap, so the convolution is a reshape of the image into (patches, 3·p·p) rows and one product with the
(width, 3·p·p) weight. On the CPU oneDNN's convolution kernels run this shape far below the matmul peak (ViT-B/32,
batch 32, forward and backward: 0.80 s against 0.14 s for the product, 2 cores), and every attack step and
training step goes through it, so :func:`use_matmul_patch_embedding` switches the layer's class to
:class:`PatchEmbedding` in place: the same module, parameters, names and state dict, the same outputs up to float
rounding. Inputs whose size is not a multiple of the patch (the convolution drops the remainder) take the
convolution as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbedding(nn.Conv2d):
    """A non-overlapping ``nn.Conv2d`` (kernel = stride, no padding) computed as one matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        if x.dim() != 4 or x.shape[-2] % kh or x.shape[-1] % kw:
            return super().forward(x)
        b, c, h, w = x.shape
        gh, gw = h // kh, w // kw
        patches = x.reshape(b, c, gh, kh, gw, kw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * kh * kw)
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        # (B, C_out, gh, gw) as a view: open_clip's reshape + permute back to (B, patches, C_out) then copies nothing
        return out.view(b, gh, gw, self.out_channels).permute(0, 3, 1, 2)


def _is_patchify(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == conv.stride
        and conv.padding in ((0, 0), 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def use_matmul_patch_embedding(model: nn.Module) -> bool:
    """Switch an open_clip model's ViT patch embedding (``visual.conv1``) to :class:`PatchEmbedding` in place.

    Returns whether it did (ResNet towers and already switched models are left as they are).
    """
    conv = getattr(getattr(model, "visual", model), "conv1", None)
    if conv is None or not _is_patchify(conv):
        return False
    conv.__class__ = PatchEmbedding
    return True
