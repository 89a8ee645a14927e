"""The library entry points: build a zero-shot classifier, evaluate it, list the registries."""

from __future__ import annotations

from pathlib import Path

import torch

from .attacks import ATTACKS
from .datasets import DATASETS
from .engine.evaluator import EvalResult, evaluate
from .methods import METHODS
from .models import HeadKnobs, ModelSpec, ZeroShotClassifier, build_text_head
from .provenance import default_cache_dir

__all__ = ["EvalResult", "create_classifier", "evaluate", "list_attacks", "list_datasets", "list_methods"]


def create_classifier(
    classnames: list[str],
    templates: list[str],
    model: ModelSpec | None = None,
    method: str = "clip",
    knobs: HeadKnobs | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = "default",
) -> ZeroShotClassifier:
    """A :class:`ZeroShotClassifier` for ``classnames`` x ``templates`` with the weights of ``method``.

    Example::

        clf = create_classifier(["cat", "dog"], ["a photo of a {}."], ModelSpec("ViT-B-32", "openai"))
        logits = clf(images)  # images in [0, 1], any resolution
    """
    model = model or ModelSpec()
    knobs = knobs or HeadKnobs()
    cache = default_cache_dir() if cache_dir == "default" else cache_dir
    loaded = METHODS.get(method).load(model, torch.device(device), None)
    head, _ = build_text_head(loaded.model, loaded.tokenizer, list(classnames), list(templates), cache)
    return ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, knobs)


def list_methods() -> list[str]:
    return METHODS.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def list_attacks() -> list[str]:
    return ATTACKS.names()
