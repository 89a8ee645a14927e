"""``interpolation``: weight-space ensembles of two image encoders (WiSE-FT), the PMG-AFT paper's Fig. 5 trade-off.

The image encoder is ``(1 - alpha) * theta0 + alpha * theta1``, key by key, with ``theta0`` / ``theta1`` the
backbone's own weights (``pretrained``) or any checkpoint :func:`~robustbench_zs.weights.load_visual_state`
reads (ours, the official PMG-AFT / TeCoA files, RobustVLM's). Nothing is trained; sweep alpha with
``--set interpolation.alpha=0,0.25,0.5,0.75,1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ZSBenchError
from ..weights import apply_visual_state, checkpoint_identity, load_visual_state
from .base import Method, MethodConfig, register_method

PRETRAINED = "pretrained"


@dataclass(frozen=True)
class InterpolationConfig(MethodConfig):
    """``theta0`` / ``theta1``: ``pretrained`` (the backbone's weights) or a checkpoint path; ``alpha`` in [0, 1]."""

    theta0: str = PRETRAINED
    theta1: str = ""
    alpha: float = 0.5

    def validate(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and 0.0 <= self.alpha <= 1.0):
            raise ZSBenchError(f"interpolation.alpha must be in [0, 1], got {self.alpha}")
        if not self.theta1:
            raise ZSBenchError(
                "interpolation needs theta1, the fine-tuned encoder: --set interpolation.theta1=PATH (a checkpoint "
                "folder or file; theta0 defaults to the pre-trained weights)"
            )
        if not self.theta0:
            raise ZSBenchError("interpolation.theta0 is empty: use 'pretrained' or a checkpoint path")


def interpolate_state(
    sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * sd0 + alpha * sd1`` for floating tensors; both state dicts must have the same keys and shapes.

    At ``alpha`` 0 and 1 the result holds copies of the endpoint's tensors (bit-identical). Non-floating tensors
    (integer buffers) must be equal in both and are taken from ``sd0``, except BatchNorm's ``num_batches_tracked``
    counter (unused in eval mode, and it differs after any fine-tuning in train mode), also taken from ``sd0``.
    """
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ZSBenchError(f"interpolation alpha must be in [0, 1], got {alpha}")
    only0 = [k for k in sd0 if k not in sd1]
    only1 = [k for k in sd1 if k not in sd0]
    if only0 or only1:
        raise ZSBenchError(
            f"cannot interpolate encoders with different keys: {len(only0)} only in theta0 (e.g. "
            f"{', '.join(only0[:3]) or '-'}), {len(only1)} only in theta1 (e.g. {', '.join(only1[:3]) or '-'})"
        )
    out: dict[str, torch.Tensor] = {}
    for k, a in sd0.items():
        b = sd1[k]
        if a.shape != b.shape:
            raise ZSBenchError(
                f"cannot interpolate encoders of different shapes: {k} is {list(a.shape)} in theta0, "
                f"{list(b.shape)} in theta1"
            )
        if a.is_floating_point() and b.is_floating_point():
            if alpha == 0.0:
                out[k] = a.detach().clone()
            elif alpha == 1.0:
                out[k] = b.detach().clone()
            else:
                dtype = torch.promote_types(a.dtype, b.dtype)
                out[k] = (1.0 - alpha) * a.detach().to(dtype) + alpha * b.detach().to(a.device, dtype)
        elif a.is_floating_point() or b.is_floating_point():
            raise ZSBenchError(f"cannot interpolate {k}: {a.dtype} in theta0, {b.dtype} in theta1")
        elif k.endswith("num_batches_tracked") or torch.equal(a.cpu(), b.cpu()):
            out[k] = a.detach().clone()
        else:
            raise ZSBenchError(
                f"cannot interpolate {k}: a non-floating buffer ({a.dtype}) that differs between the two"
            )
    return out


@register_method
class Interpolation(Method):
    """WiSE-FT: evaluate the image encoder ``(1 - alpha) * theta0 + alpha * theta1`` (no training)."""

    id = "interpolation"
    name = "Weight interpolation (WiSE-FT)"
    summary = (
        "image encoder (1-alpha)*theta0 + alpha*theta1 (pre-trained vs fine-tuned weights); sweep alpha, no training"
    )
    paper = "Wortsman et al., Robust fine-tuning of zero-shot models, CVPR 2022 (PMG-AFT paper, Fig. 5)"
    Config = InterpolationConfig
    trains = "nothing"
    weights_options = ("theta0", "theta1")  # keyed by the endpoints' hashes (weights_identity), not their paths
    needs_labels = False

    def __init__(self, config: InterpolationConfig | None = None) -> None:
        super().__init__(config)
        self._arch: str | None = None
        self.sources: dict[str, dict] = {}

    def check_model(self, model: nn.Module, arch: str) -> None:
        self._arch = arch

    def _endpoint(self, which: str, spec: str, pretrained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if spec == PRETRAINED:
            self.sources[which] = {"source": PRETRAINED}
            return pretrained

        state, info = load_visual_state(spec, self._arch)
        self.sources[which] = {"source": spec, **{k: info[k] for k in ("format", "checkpoint") if k in info}}
        return state

    def build_encoder(self, model: nn.Module) -> nn.Module:
        """Mix theta0 and theta1 into ``model.visual`` (strictly checked) and return it.

        ``pretrained`` is ``model.visual``'s state when this is called, so call it once, on a freshly loaded backbone.
        """

        visual = model.visual
        if getattr(visual, "_zsbench_interpolated", False):
            raise ZSBenchError("interpolation: this backbone's weights were already interpolated; load it afresh")
        cfg = self.config
        pretrained = {k: v.detach().to("cpu", copy=True) for k, v in visual.state_dict().items()}
        sd0 = self._endpoint("theta0", cfg.theta0, pretrained)
        sd1 = self._endpoint("theta1", cfg.theta1, pretrained)
        apply_visual_state(model, interpolate_state(sd0, sd1, cfg.alpha), self._arch)
        visual._zsbench_interpolated = True
        return visual

    def weights_identity(self) -> dict:
        """The endpoints' identities, known before any weights are loaded (for record keys)."""

        cfg = self.config
        return {
            which: spec if spec == PRETRAINED else checkpoint_identity(spec)
            for which, spec in (("theta0", cfg.theta0), ("theta1", cfg.theta1))
        }

    def identity(self) -> dict:
        """What the encoder was mixed from (after :meth:`build_encoder`): alpha, and each endpoint's source / sha256."""
        return {"alpha": self.config.alpha, **self.sources}
