"""Load open_clip models: a pretrained tag, a local checkpoint file, weights shipped with this package (the world
model, ``--arch zsbench-world --pretrained world``), or random weights (tiny test architectures)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import logging
import os
import socket
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub
import open_clip
import torch
from open_clip import factory
from open_clip import model as oc_model
from open_clip.convert import load_big_vision_weights
from torch import nn

from ..errors import ZSBenchError
from ..provenance import sha256_file, sha256_tensors
from ..weights import CheckpointFormatError, PackagedWeights, load_state_file
from ..world import WORLD_WEIGHTS
from .patch_embed import use_matmul_patch_embedding

_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

#: Architectures this package adds to open_clip (the tiny test models, random weights only; the world model).
TINY_ARCHS = tuple(sorted(p.stem for p in _CONFIG_DIR.glob("*.json")))

RANDOM = "random"


#: Weights shipped inside the package, by (arch, pretrained tag).
PACKAGED: dict[tuple[str, str], PackagedWeights] = {("zsbench-world", "world"): WORLD_WEIGHTS}


def packaged_weights(spec: ModelSpec) -> PackagedWeights:
    """The shipped weights of ``spec`` (a KeyError for any other spec)."""
    return PACKAGED[(spec.arch, spec.pretrained)]


#: Tokenizers of this package's own architectures (``module:callable``), where open_clip's would not fit.
OWN_TOKENIZERS = {"zsbench-world": "robustbench_zs.world.tokenizer:WorldTokenizer"}


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
    """Check that the architecture and weights exist; returns (kind, tag config) with kind in
    tag/file/package/random."""
    if spec.arch not in open_clip.list_models():
        known = ", ".join(
            m for m in open_clip.list_models() if m.startswith(("ViT-B", "ViT-L", "RN50")) or m in TINY_ARCHS
        )
        raise ZSBenchError(
            f"unknown architecture {spec.arch!r}; some known ones: {known} (see open_clip.list_models())"
        )
    if spec.pretrained == RANDOM:
        return "random", {}
    if (spec.arch, spec.pretrained) in PACKAGED:
        return "package", {}
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
    cfg = open_clip.get_model_config(spec.arch) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    kind, _ = resolve_spec(spec)
    tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) if kind == "tag" else {}
    return {
        "image_size": size,
        "interpolation": (tag_cfg or {}).get("interpolation") or "bicubic",
        "resize_mode": (tag_cfg or {}).get("resize_mode") or "shortest",
    }


#: how long the one check for a network waits for the hub before weights are looked up in the local cache only
HUB_PROBE_S = 3.0


@functools.cache
def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers (one TCP connection, at most :data:`HUB_PROBE_S`; asked once per
    process); False at once under ``HF_HUB_OFFLINE=1``. Without it, the hub client retries for about a minute."""
    if huggingface_hub.constants.is_offline_mode():
        return False
    url = urllib.parse.urlsplit(huggingface_hub.constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_S).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _cache_only():
    """The hub client in offline mode for this block: weights come from the local cache or not at all."""
    before = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE = before


def _download(spec: ModelSpec, tag_cfg: dict, cache_dir: str | None) -> str:
    """The local file of an open_clip pretrained tag: from the cache, fetched from the hub when it answers."""
    online = hub_reachable()
    try:
        with contextlib.nullcontext() if online else _cache_only():
            return open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # network, hub or disk errors all end up here
        if not online:
            raise ZSBenchError(
                f"cannot fetch the weights of {spec.arch}/{spec.pretrained}: no network (the hub "
                f"{huggingface_hub.constants.ENDPOINT} did not answer within {HUB_PROBE_S:g} s, or HF_HUB_OFFLINE is "
                "set) and they are not in the local cache; pass --pretrained PATH (a local open_clip checkpoint "
                "file), or a published checkpoint of the zoo (zsbench models list)"
            ) from None
        raise ZSBenchError(
            f"could not fetch the weights of {spec.arch}/{spec.pretrained} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); on a machine without internet, copy the "
            "checkpoint file here and pass --pretrained PATH"
        ) from None


def load_model(spec: ModelSpec, device: torch.device | str = "cpu", cache_dir: str | None = None) -> LoadedModel:
    """Build the model in fp32 on ``device`` in eval mode, with every weight hashed for the records."""
    kind, tag_cfg = resolve_spec(spec)
    checkpoint_sha = None
    if kind == "random":
        source = RANDOM
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            torch.manual_seed(spec.init_seed)
            model = open_clip.create_model(spec.arch, pretrained=None, device="cpu")
    elif kind == "package":
        shipped = PACKAGED[(spec.arch, spec.pretrained)]
        checkpoint_sha = sha256_file(shipped.path) if shipped.path.is_file() else None
        if checkpoint_sha != shipped.sha256:
            raise ZSBenchError(
                f"the shipped weights {shipped.path} are "
                + ("missing" if checkpoint_sha is None else f"damaged (sha256 {checkpoint_sha[:12]}…)")
                + f"; reinstall robustbench_zs, or rebuild them with: {shipped.command}"
            )
        source = f"package:{shipped.file}"
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            model = open_clip.create_model(spec.arch, pretrained=None, device="cpu")
        load_weights_file(model, shipped.path, spec.arch)
    elif kind == "tag":
        path = _download(spec, tag_cfg, cache_dir)
        source = f"open_clip:{spec.arch}/{spec.pretrained}"
        checkpoint_sha = sha256_file(path)
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        try:
            # open_clip logs at INFO and prints warnings for harmless key renames; keep the console clean
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.load's pickle-protocol notes; errors still raise
                model = open_clip.create_model(
                    spec.arch, pretrained=spec.pretrained, device="cpu", force_quick_gelu=quick_gelu
                )
        except Exception as e:  # torch.load and load_state_dict raise many types; the user needs one line
            raise _not_loadable(spec, e) from None
    else:
        source = f"file:{Path(spec.pretrained).resolve()}"
        checkpoint_sha = sha256_file(spec.pretrained)
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            model = open_clip.create_model(spec.arch, pretrained=None, device="cpu")
        load_weights_file(model, spec.pretrained, spec.arch)
    use_matmul_patch_embedding(model)  # same parameters and outputs; several times faster on the CPU
    model = model.float().eval().to(device)
    tokenizer = make_tokenizer(spec.arch)
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


def make_tokenizer(arch: str):
    """The tokenizer of ``arch``: this package's own where it has one (the world model's word-level vocabulary), else
    open_clip's."""
    own = OWN_TOKENIZERS.get(arch)
    if own is None:
        return open_clip.get_tokenizer(arch)

    module, name = own.split(":")
    return getattr(importlib.import_module(module), name)()


def _not_loadable(spec: ModelSpec, e: BaseException) -> ZSBenchError:
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return ZSBenchError(
        f"could not load {spec.pretrained} into {spec.arch} ({type(e).__name__}: {msg}); expected an open_clip "
        f"checkpoint of {spec.arch} (a state dict saved with torch.save or safetensors)"
    )


def load_weights_file(model: nn.Module, path: str | os.PathLike, arch: str) -> None:
    """Load a local checkpoint file into an open_clip ``model``, never unpickling anything but tensors.

    The file is read by :func:`robustbench_zs.weights.load_state_file` (safetensors, else
    ``torch.load(weights_only=True)``; a pickle that needs code is refused in one line before anything runs), on
    every open_clip and torch version: open_clip's own loader is not used, since open_clip before 3 and torch before
    2.6 unpickle arbitrary objects by default. The state dict then gets open_clip's own layout fixes (old text-tower
    key names, positional embeddings of another length, scalar logit scale) and is loaded strictly.
    """

    p = Path(path)
    if p.suffix in (".npz", ".npy"):  # big_vision (SigLIP) weights: numpy arrays, read without pickle
        try:
            load_big_vision_weights(model, str(p))
        except Exception as e:  # noqa: BLE001 - numpy and the converter raise many types
            raise _not_loadable(ModelSpec(arch, str(p)), e) from None
        return
    try:
        state, _ = load_state_file(p)
    except CheckpointFormatError as e:
        raise ZSBenchError(
            f"could not load {p} into {arch} ({e.reason}); expected an open_clip checkpoint of {arch} (a state dict "
            "saved with torch.save or safetensors)"
        ) from None
    try:
        model.load_state_dict(_open_clip_layout(model, state), strict=True)
    except Exception as e:  # missing / unexpected keys, shape mismatches
        raise _not_loadable(ModelSpec(arch, str(p)), e) from None


def _open_clip_layout(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What open_clip's ``load_checkpoint`` does to a state dict before loading it (tensor operations only)."""

    def helper(name: str):
        return getattr(factory, name, None) or getattr(oc_model, name, None)

    convert = helper("convert_state_dict")  # third-party layouts (open_clip >= 3)
    if convert is not None:
        state = convert(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = helper("convert_to_custom_text_state_dict")(state)
    for name in ("logit_scale", "logit_bias"):
        own = getattr(model, name, None)
        if name in state and isinstance(own, torch.Tensor) and own.ndim != state[name].ndim:
            state[name] = state[name].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and not hasattr(model, position_ids):
        del state[position_ids]
    for name in ("resize_pos_embed", "resize_text_pos_embed"):
        resize = helper(name)
        if resize is not None:
            resize(state, model)
    return state


def model_identity(spec: ModelSpec) -> dict:
    """What identifies the weights, computable without building the model."""
    kind, _ = resolve_spec(spec)
    if kind == "random":
        return {"arch": spec.arch, "weights": f"{RANDOM}(seed={spec.init_seed})"}
    if kind == "tag":
        return {"arch": spec.arch, "weights": f"open_clip:{spec.pretrained}"}
    if kind == "package":  # the shipped file's sha256 (checked against the package's own on load)
        return {"arch": spec.arch, "weights": f"sha256:{packaged_weights(spec).sha256}"}
    return {"arch": spec.arch, "weights": f"sha256:{sha256_file(spec.pretrained)}"}
