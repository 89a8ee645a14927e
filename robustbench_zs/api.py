"""The library entry points: build a zero-shot classifier, evaluate it, list the registries."""

from __future__ import annotations

from pathlib import Path

import torch

from .attacks import ATTACKS
from .datasets import DATASETS
from .datasets.preprocess import PreprocessedDataset, resolve_preprocess
from .engine.evaluator import EvalResult, evaluate
from .engine.variants import resolve_variants
from .methods import METHODS
from .methods.defense import Defense, is_defense
from .models import HeadKnobs, ModelSpec, ZeroShotClassifier, build_text_head
from .models.loader import model_preprocess_cfg
from .provenance import default_cache_dir, default_data_root, default_models_dir

__all__ = [
    "EvalResult",
    "create_classifier",
    "evaluate",
    "list_attacks",
    "list_datasets",
    "list_methods",
    "load_dataset",
]


def create_classifier(
    classnames: list[str],
    templates: list[str],
    model: ModelSpec | None = None,
    method: str = "clip",
    knobs: HeadKnobs | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = "default",
    checkpoint: str | Path | None = None,
    options: dict[str, str] | None = None,
) -> ZeroShotClassifier | Defense:
    """A :class:`ZeroShotClassifier` for ``classnames`` x ``templates`` with the weights of ``method``; for a
    test-time defense (``ttc``, ``clipure``), that classifier under the defense (a
    :class:`~robustbench_zs.methods.defense.Defense`: the same call, its inference defended).

    A trained method takes ``checkpoint`` (our checkpoint folder or a foreign file), else the newest complete
    checkpoint of it for ``model`` under ``$ZSBENCH_MODELS`` (``./models``); ``options`` are method options.

    Example::

        clf = create_classifier(["cat", "dog"], ["a photo of a {}."], ModelSpec("ViT-B-32", "openai"))
        logits = clf(images)  # images in [0, 1], any resolution
    """
    model = model or ModelSpec()
    knobs = knobs or HeadKnobs()
    cache = default_cache_dir() if cache_dir == "default" else cache_dir

    METHODS.get(method)
    (variant, *_) = resolve_variants(
        (method,),
        model,
        {method: dict(options)} if options else {},
        {method: Path(checkpoint)} if checkpoint else {},
        default_models_dir(),
        train_fn=None,
    )
    loaded, encoder = variant.load(torch.device(device))
    head, _ = build_text_head(loaded.model, loaded.tokenizer, list(classnames), list(templates), cache)
    classifier = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, knobs, encoder)
    if not is_defense(variant.method):
        return classifier

    def embed_text(names: list[str]) -> torch.Tensor:
        return build_text_head(loaded.model, loaded.tokenizer, names, list(templates), cache)[0]

    # a test-time defense: its deployed forward around the classifier (random draws from its own generator)
    return variant.method.build_defense(classifier, embed_text)


def load_dataset(
    name: str,
    data_root: str | Path | None = None,
    split: str | None = None,
    preprocess: str = "paper",
    model: ModelSpec | None = None,
    attack_resolution: str = "model",
) -> PreprocessedDataset:
    """A dataset ready for :func:`evaluate`: items are (uint8 image (3, H, W) under ``preprocess``, label).

    ``preprocess="paper"`` is the PMG-AFT protocol (CIFAR/STL-10 native, others Resize(256) + CenterCrop(224));
    ``"standard"`` uses ``model``'s own resize and crop (default ViT-B-32). ``.data`` is the raw split (with its
    ``classnames``), ``.preprocess`` the pipeline; ``spec.prompt_classnames(ds.data.classnames)`` gives the paper names.
    """
    spec = DATASETS.get(name)
    cfg = model_preprocess_cfg(model or ModelSpec()) if preprocess == "standard" else None
    pre = resolve_preprocess(preprocess, spec, cfg, attack_resolution)
    data = spec.loader(Path(data_root) if data_root is not None else default_data_root(), split or spec.eval_split)
    return PreprocessedDataset(data, pre)


def list_methods() -> list[str]:
    return METHODS.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def list_attacks() -> list[str]:
    return ATTACKS.names()
