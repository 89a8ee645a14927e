"""The ViT patch embedding computed as a matrix product equals open_clip's convolution, forward and backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustbench_zs.models import ModelSpec, load_model
from robustbench_zs.models.patch_embed import PatchEmbedding, use_matmul_patch_embedding


@pytest.mark.parametrize(("patch", "size", "bias"), [(32, 224, False), (16, 64, True), (4, 30, False)])
def test_equals_the_convolution_forward_and_backward(patch: int, size: int, bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, kernel_size=patch, stride=patch, bias=bias)
    fast = copy.deepcopy(conv)
    fast.__class__ = PatchEmbedding
    x = torch.rand(5, 3, size, size, requires_grad=True)
    outs, grads = [], []
    for m in (conv, fast):
        out = m(x)
        tokens = out.reshape(out.shape[0], out.shape[1], -1).permute(0, 2, 1)  # as open_clip uses it
        (tokens * torch.linspace(-1, 1, tokens.shape[-1])).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad.clone(), *(p.grad.clone() for p in m.parameters())])
        x.grad = None
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_loaded_vits_use_it_and_keep_their_weights() -> None:
    loaded = load_model(ModelSpec("zsbench-tiny", "random", init_seed=0))
    conv1 = loaded.model.visual.conv1
    assert type(conv1) is PatchEmbedding and isinstance(conv1, nn.Conv2d)
    fresh = load_model(ModelSpec("zsbench-tiny", "random", init_seed=0))
    assert loaded.weights_sha256 == fresh.weights_sha256 and "visual.conv1.weight" in loaded.model.state_dict()
    assert not use_matmul_patch_embedding(loaded.model)  # once only
    rn = load_model(ModelSpec("zsbench-tiny-rn", "random", init_seed=0)).model.visual
    assert type(rn.conv1) is nn.Conv2d  # a ResNet stem (overlapping 3x3 kernels) is left alone
