"""Prompt sets: which class names and templates build the zero-shot head, chosen per run and recorded.

- ``paper``: the single prompt and the class-name clean-up of the official PMG-AFT code (protocol.md section 5).
- ``ensemble``: CLIP_benchmark's curated class names and template ensembles (each spec's ``ensemble_templates`` and
  ``ensemble_names``); for the two datasets it lacks, our own: TinyImageNet gets the curated ImageNet-1k names of its
  wnids with the ImageNet-1k ensemble, Caltech-256 cleaned folder names with the Caltech-101 ensemble.

A user override file (JSON ``{"<dataset id>": {"classnames": [...], "templates": [...]}}``, either key optional)
replaces names or templates of the chosen set; the set is then recorded as ``<set>+override``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ZSBenchError
from .spec import DatasetSpec, ImageDataset, load_metadata

PROMPT_SETS = ("paper", "ensemble")


def _cb() -> dict:
    return load_metadata("clip_benchmark_en")


def prompt_set(
    spec: DatasetSpec, data: ImageDataset, name: str, overrides: dict | None = None
) -> tuple[list[str], list[str], str]:
    """(class names, templates, recorded set name) for ``spec`` under prompt set ``name``."""
    if name not in PROMPT_SETS:
        raise ZSBenchError(f"unknown prompt set {name!r}; available: {', '.join(PROMPT_SETS)}")
    if name == "paper":
        names, templates = spec.prompt_classnames(data.classnames), list(spec.templates)
    elif spec.own_ensemble_templates is not None:
        templates, names = list(spec.own_ensemble_templates), list(spec.ensemble_names(data))
    else:
        if spec.ensemble_templates is None:
            raise ZSBenchError(f"no ensemble prompts for {spec.id}; use --prompts paper or an override file")
        templates = [t.replace("{c}", "{}") for t in _cb()["templates"][spec.ensemble_templates]]
        names = list(spec.ensemble_names(data))
    recorded = name
    over = (overrides or {}).get(spec.id)
    if over:
        if "classnames" in over:
            if len(over["classnames"]) != spec.num_classes:
                raise ZSBenchError(
                    f"override for {spec.id}: {len(over['classnames'])} class names, the dataset has {spec.num_classes}"
                )
            names = [str(c) for c in over["classnames"]]
        if "templates" in over:
            templates = [str(t) for t in over["templates"]]
        digest = hashlib.sha256(json.dumps(over, sort_keys=True).encode()).hexdigest()[:8]
        recorded = f"{name}+override:{digest}"
    if not templates or any("{}" not in t for t in templates):
        raise ZSBenchError(f"{spec.id}: every template must contain '{{}}' where the class name goes")
    for t in templates:
        try:
            t.format("class")
        except (KeyError, IndexError, ValueError) as e:
            raise ZSBenchError(
                f"{spec.id}: template {t[:80]!r} has a placeholder other than one '{{}}' ({type(e).__name__}: {e}); "
                "write literal braces as '{{' and '}}'"
            ) from None
    return names, templates, recorded


def load_overrides(path: str | Path | None) -> dict | None:
    """Read and check a prompt override file; one-line errors for a missing or malformed file."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ZSBenchError(f"cannot read prompt override file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ZSBenchError(f"prompt override file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(v, dict) and set(v) <= {"classnames", "templates"} and all(isinstance(x, list) for x in v.values())
        for v in data.values()
    ):
        raise ZSBenchError(
            f'prompt override file {path}: expected {{"<dataset id>": {{"classnames": [...], "templates": [...]}}}}'
        )
    return data
