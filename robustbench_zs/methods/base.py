"""The method registry: how each method's image encoder is obtained (trained methods come with the engine)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Args:
        id: registry name.
        name: display name.
        summary: one line for ``zsbench list methods``.
        paper: reference.
        trains: what the method trains ("nothing" for zero-shot CLIP).
        load: ``load(model_spec, device, cache_dir) -> LoadedModel``: the model the method evaluates.
    """

    id: str
    name: str
    summary: str
    paper: str
    trains: str
    load: Callable = None  # type: ignore[assignment]


METHODS: Registry[MethodSpec] = Registry("method")
