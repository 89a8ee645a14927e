"""Load open_clip models: a pretrained tag, a local checkpoint file, or random weights (tiny test architectures)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from torch import nn

from ..errors import ZSBenchError
from ..provenance import sha256_file, sha256_tensors

_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

#: Architectures this package adds to open_clip (random weights only; for tests and the smoke preset).
TINY_ARCHS = tuple(sorted(p.stem for p in _CONFIG_DIR.glob("*.json")))

RANDOM = "random"


@dataclass(frozen=True)
class ModelSpec:
    """Which backbone to load.

    Args:
        arch: an open_clip architecture name (``ViT-B-32``) or one of :data:`TINY_ARCHS`.
        pretrained: an open_clip pretrained tag (``openai``), a path to a checkpoint file, or ``"random"``.
        init_seed: seed of the random initialisation when ``pretrained == "random"``.
    """

    arch: str = "ViT-B-32"
    pretrained: str = "openai"
    init_seed: int = 0

    @property
    def label(self) -> str:
        if self.pretrained == RANDOM:
            return f"{self.arch}/random(seed={self.init_seed})"
        if os.sep in self.pretrained or Path(self.pretrained).suffix:
            return f"{self.arch}/{Path(self.pretrained).name}"
        return f"{self.arch}/{self.pretrained}"


@dataclass
class LoadedModel:
    """An open_clip model plus everything needed to trace its weights."""

    spec: ModelSpec
    model: nn.Module
    tokenizer: object
    image_size: tuple[int, int]
    source: str  # "open_clip:<arch>/<tag>", "file:<path>" or "random"
    checkpoint_sha256: str | None  # sha256 of the weights file; None for random weights
    weights_sha256: str  # sha256 of the loaded state dict (always set)
    extra: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        return {
            "arch": self.spec.arch,
            "pretrained": self.spec.pretrained,
            "init_seed": self.spec.init_seed if self.spec.pretrained == RANDOM else None,
            "source": self.source,
            "checkpoint_sha256": self.checkpoint_sha256,
            "weights_sha256": self.weights_sha256,
            "image_size": list(self.image_size),
        }


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip warns on the root logger that random weights are random; that is the point here."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _image_size(model: nn.Module) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", None)
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    raise ZSBenchError(f"cannot tell the input size of this open_clip model's image tower ({type(model.visual)})")


def resolve_spec(spec: ModelSpec) -> tuple[str, dict]:
    """Check that the architecture and weights exist; returns (kind, tag config) with kind in tag/file/random."""
    if spec.arch not in open_clip.list_models():
        known = ", ".join(
            m for m in open_clip.list_models() if m.startswith(("ViT-B", "ViT-L", "RN50")) or m in TINY_ARCHS
        )
        raise ZSBenchError(
            f"unknown architecture {spec.arch!r}; some known ones: {known} (see open_clip.list_models())"
        )
    if spec.pretrained == RANDOM:
        return "random", {}
    tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if tag_cfg:
        return "tag", tag_cfg
    if Path(spec.pretrained).is_file():
        return "file", {}
    tags = open_clip.list_pretrained_tags_by_model(spec.arch)
    raise ZSBenchError(
        f"--pretrained {spec.pretrained!r} is neither a pretrained tag of {spec.arch} nor an existing file; "
        f"tags for {spec.arch}: {', '.join(tags) or 'none'}, or 'random'"
    )


def model_preprocess_cfg(spec: ModelSpec) -> dict:
    """The model's own input preprocessing, known without loading weights: image size, interpolation, resize mode.

    From open_clip's architecture config and pretrained-tag metadata (open_clip's defaults, bicubic and shortest-side
    resize, for checkpoint files and random weights).
    """
    resolve_spec(spec)
    cfg = open_clip.get_model_config(spec.arch) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) if spec.pretrained != RANDOM else {}
    return {
        "image_size": size,
        "interpolation": (tag_cfg or {}).get("interpolation") or "bicubic",
        "resize_mode": (tag_cfg or {}).get("resize_mode") or "shortest",
    }


def load_model(spec: ModelSpec, device: torch.device | str = "cpu", cache_dir: str | None = None) -> LoadedModel:
    """Build the model in fp32 on ``device`` in eval mode, with every weight hashed for the records."""
    kind, tag_cfg = resolve_spec(spec)
    checkpoint_sha = None
    kwargs: dict = {}
    if kind == "random":
        source = RANDOM
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            torch.manual_seed(spec.init_seed)
            model = open_clip.create_model(spec.arch, pretrained=None, device="cpu")
    else:
        if kind == "tag":
            try:
                path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
            except Exception as e:  # network, hub or disk errors all end up here
                raise ZSBenchError(
                    f"could not fetch the weights of {spec.arch}/{spec.pretrained} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); on a machine without internet, copy the "
                    "checkpoint file here and pass --pretrained PATH"
                ) from None
            source = f"open_clip:{spec.arch}/{spec.pretrained}"
            kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        else:
            path = spec.pretrained
            source = f"file:{Path(path).resolve()}"
        checkpoint_sha = sha256_file(path)
        try:
            # open_clip logs at INFO and prints warnings for harmless key renames; keep the console clean
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.load's pickle-protocol notes; errors still raise
                model = open_clip.create_model(spec.arch, pretrained=spec.pretrained, device="cpu", **kwargs)
        except pickle.UnpicklingError:
            raise ZSBenchError(
                f"refusing {spec.pretrained}: it is not a plain tensor state dict (loading it would need arbitrary "
                f"unpickling, which can run code); expected an open_clip checkpoint of {spec.arch} saved as a state dict"
            ) from None
        except Exception as e:  # torch.load and load_state_dict raise many types; the user needs one line
            msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise ZSBenchError(
                f"could not load {spec.pretrained} into {spec.arch} ({type(e).__name__}: {msg}); expected an open_clip "
                f"checkpoint of {spec.arch} (a state dict saved with torch.save or safetensors)"
            ) from None
    model = model.float().eval().to(device)
    tokenizer = open_clip.get_tokenizer(spec.arch)
    logging.getLogger(__name__).debug("loaded %s from %s", spec.arch, source)
    return LoadedModel(
        spec=spec,
        model=model,
        tokenizer=tokenizer,
        image_size=_image_size(model),
        source=source,
        checkpoint_sha256=checkpoint_sha,
        weights_sha256=sha256_tensors(dict(model.state_dict())),
    )
