"""Checks of a state dict against the module it is loaded into, before ``load_state_dict`` casts anything."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import ZSBenchError


def check_state_tensors(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse, in one line naming the tensor, what ``load_state_dict`` would silently cast or load: a tensor whose
    kind (floating point, integer, boolean) differs from the module's, or floating-point values that are NaN or
    infinite (weights a run would only crash on, or worse, evaluate)."""
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ZSBenchError(f"{where}: {name} is a {type(t).__name__}, not a tensor; the file is not a weights file")
        mine = own.get(name)
        if mine is not None and (_kind(t) != _kind(mine)):
            raise ZSBenchError(
                f"{where}: tensor {name} is {str(t.dtype).removeprefix('torch.')} where the model has "
                f"{str(mine.dtype).removeprefix('torch.')}; the file is damaged or not weights of this model"
            )
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise ZSBenchError(
                f"{where}: tensor {name} holds NaN or infinite values; the training that wrote it diverged, "
                "train it again"
            )


def _kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "boolean"
    if t.is_floating_point() or t.is_complex():
        return "floating point"
    return "integer"
