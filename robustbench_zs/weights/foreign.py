"""Foreign weights files, read without running code from them, and the official formats' import.

Foreign files that :func:`load_visual_state` reads, all turned into a state dict for open_clip's ``model.visual``:

- the official PMG-AFT and TeCoA training scripts: a ``torch.save``'d dict with ``epoch``, ``state_dict`` and
  ``add_prompter`` (prompter states), ``vision_encoder_state_dict`` (``model.module.visual.state_dict()`` of OpenAI's
  ``clip`` package: no ``module.`` prefix, OpenAI key names, fp32), ``best_acc1`` and ``optimizer``. open_clip's
  VisionTransformer and ModifiedResNet keep OpenAI's key names, so these load as they are. ``best_acc1`` and the
  optimizer's learning rate are numpy float64 scalars in those files (``np.mean``, ``np.cos``), so numpy scalars and
  dtypes are the only globals allowed beyond torch's weights-only set;
- RobustVLM (FARE, TeCoA): ``torch.save(model.visual.state_dict())`` of an open_clip model; its released models are
  whole open_clip state dicts (``visual.`` prefix, text tower ignored here);
- any state dict with ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefixes, and plain safetensors files.

Every ``torch.load`` is ``weights_only=True``: a file that needs more than tensors and containers is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ZSBenchError
from ..tensors import check_state_tensors
from .base import CheckpointFormatError, UnsafeCheckpointError, corrupt
from .ours import checkpoint_identity, is_ours, load_checkpoint


def _numpy_scalar_globals():
    """Allow numpy scalars and dtypes in torch.load (the official PMG-AFT / TeCoA files hold some); nothing else."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:
        return contextlib.nullcontext()
    try:  # the module moved in numpy 2: a function-local import that tries both places
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    # files written under numpy 1 name the constructor numpy.core..., under numpy 2 numpy._core...
    named = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    # unpickling a dtype builds an instance of its class (numpy.dtypes.Float64DType, ...): allow the numeric ones
    dtype_classes = {type(np.dtype(c)) for c in ("f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "?")}
    return safe_globals([*named, np.dtype, *dtype_classes])


def _sniff_safetensors(p: Path) -> bool:
    """A safetensors file starts with the little-endian length of its JSON header, then ``{``."""
    with open(p, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") <= p.stat().st_size - 8


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def html_head(head: bytes) -> bool:
    """Whether the first bytes of a file are a web page (HTML or XML) rather than weights.

    No weights format starts like text: a pickle starts with ``0x80``, a zip with ``PK``, safetensors with the
    8-byte length of its header. A byte-order mark, blank space and comments before the markup are skipped.
    """
    text = head.lstrip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml", b"<!--")) or b"<html" in text[:200]


def looks_like_html(p: Path) -> bool:
    """A web page saved in place of weights (a login wall, a Google Drive interstitial, an error page)."""
    with open(p, "rb") as f:
        return html_head(f.read(512))


#: modules whose names a weights file may reference (what torch's weights-only unpickler itself accepts)
_SAFE_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "numpy.", "_codecs.encode", "builtins.set")


def _pickle_globals(p: Path) -> list[str]:
    """The callables a pickle (plain, or torch's zip archive) references, read with pickletools: nothing runs."""
    streams = []
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            streams = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    else:
        streams = [p.read_bytes()]
    found = []
    for data in streams:
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(data):
                if op.name in ("GLOBAL", "INST"):
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # noqa: BLE001 - a damaged stream: report what was read before the damage
            pass
    return found


def _torch_load(p: Path) -> object:
    if looks_like_html(p):
        raise ZSBenchError(
            f"{p} is a web page, not weights (an error or login page saved in place of the checkpoint); "
            "download it again, e.g. with zsbench models download"
        )
    try:
        with _numpy_scalar_globals(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        found = _GLOBAL_RE.search(msg)
        unsafe = [g for g in _pickle_globals(p) if not g.startswith(_SAFE_GLOBAL_PREFIXES)]
        if found or unsafe or "Can only build" in msg or "global" in msg.lower():
            what = (found.group(1) or found.group(2)) if found else unsafe[0] if unsafe else "a non-tensor object"
            # a legacy (non-zip) pickle cut short can end inside a name; a zip archive is checked as a whole first
            cut = "" if zipfile.is_zipfile(p) else " (or, if this file was cut short, copy it again)"
            raise UnsafeCheckpointError(
                f"refusing {p}: it holds {what}, and loading it would need arbitrary unpickling, which can run code; "
                f"re-save the weights as a state dict with torch.save(state_dict) or safetensors{cut}"
            ) from None
        raise corrupt(p, e) from None
    except Exception as e:  # torch.load raises RuntimeError, OSError, EOFError, struct.error... on damaged files
        raise corrupt(p, e) from None


def _tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, p: Path) -> tuple[Mapping, dict]:
    """The state dict inside a loaded file, and what the file says about itself."""
    if not isinstance(obj, Mapping):
        what = f"holds a {type(obj).__name__}, not a state dict"
        raise CheckpointFormatError(f"{p} {what}", what)
    if "vision_encoder_state_dict" in obj:
        info: dict = {"format": "tecoa/pmg_aft"}
        for key in ("epoch", "best_acc1"):
            value = obj.get(key)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            with contextlib.suppress(TypeError, ValueError):
                info[key] = int(value) if key == "epoch" else float(value)
        sd = obj["vision_encoder_state_dict"]
        if not isinstance(sd, Mapping):
            what = f"vision_encoder_state_dict is a {type(sd).__name__}, not a state dict"
            raise CheckpointFormatError(f"{p}: {what}", what)
        return sd, info
    for key in ("state_dict", "model_state_dict", "model"):
        if _tensor_dict(obj.get(key)):
            return obj[key], {"format": f"state_dict[{key}]"}
    if all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
        return obj, {"format": "state_dict"}
    keys = ", ".join(sorted(str(k) for k in obj)[:8])
    raise CheckpointFormatError(
        f"{p}: no image-encoder weights found (top-level keys: {keys or 'none'}); expected a robustbench_zs "
        "checkpoint folder, a PMG-AFT/TeCoA file with vision_encoder_state_dict, or an open_clip visual state dict",
        f"no state dict found (top-level keys: {keys or 'none'})",
    )


def _strip_wrappers(raw: Mapping, p: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A str -> Tensor dict with DataParallel (``module.``) and torch.compile (``_orig_mod.``) prefixes removed."""
    bad = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        what = f"{len(bad)} entries are not tensors (e.g. {', '.join(bad[:3])})"
        raise CheckpointFormatError(f"{p}: {what}; not a state dict", what)
    state = {str(k): v for k, v in raw.items()}
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped.append(prefix)
                changed = True
    return state, stripped


def _visual_keys(raw: Mapping, p: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Key names of open_clip's ``model.visual``: DataParallel / compile prefixes removed, the image tower selected."""
    state, stripped = _strip_wrappers(raw, p)
    if any(k.startswith("vision_model.") for k in state):
        raise ZSBenchError(
            f"{p} is in Hugging Face transformers' CLIP layout (vision_model.*), which is not converted here; "
            "use an open_clip or OpenAI-layout state dict"
        )
    ignored = 0
    if any(k.startswith("visual.") for k in state):  # a whole open_clip / OpenAI CLIP model
        visual = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        ignored = len(state) - len(visual)
        state = visual
        stripped.append("visual.")
    elif state and all(k.startswith("model.") for k in state):  # RobustVLM's ClipVisionModel wrapper
        state = {k[len("model.") :]: v for k, v in state.items()}
        stripped.append("model.")
    return state, {"stripped_prefixes": stripped, "ignored_keys": ignored}


def _check_finite(state: Mapping[str, torch.Tensor], p: Path) -> None:
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ZSBenchError(f"{p}: tensor {k} holds NaN or inf; the checkpoint is damaged or its training diverged")


def _read_state_file(p: Path) -> tuple[Mapping, dict]:
    """The state dict in a foreign file, read without running code: safetensors, else ``torch.load(weights_only)``."""
    if _sniff_safetensors(p):
        try:
            return load_file(str(p)), {"format": "safetensors"}
        except Exception as e:  # safetensors raises its own error types
            raise corrupt(p, e) from None
    return _unwrap(_torch_load(p), p)


def load_state_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """A whole state dict (any model) from a weights file, read without running code from it.

    ``path``: a safetensors file (recognized by its content, whatever its name), or a ``torch.save`` file read with
    ``torch.load(weights_only=True)``: a plain state dict, or a dict holding one under ``state_dict`` (open_clip's
    training checkpoints), ``model_state_dict`` or ``model``. ``module.`` and ``_orig_mod.`` prefixes are removed.

    Raises:
        UnsafeCheckpointError: a pickle that needs more than tensors and containers (nothing from it ran).
        CorruptCheckpointError / CheckpointFormatError: truncated or corrupt, or no state dict in it.
        ZSBenchError: a web page saved in place of weights, or NaN / inf weights.
    """
    p = Path(path)
    if not p.is_file():
        raise ZSBenchError(f"{p}: no such checkpoint file")
    raw, info = _read_state_file(p)
    state, stripped = _strip_wrappers(raw, p)
    _check_finite(state, p)
    return state, {**info, "stripped_prefixes": stripped, "num_tensors": len(state)}


def check_complete(path: str | os.PathLike) -> str:
    """Whether a weights file is whole, judged from its structure (for downloads with no published size or sha256).

    safetensors: the header parses and the tensors it lists end exactly at the end of the file. A zip (what
    ``torch.save`` writes): its central directory is there and every member's CRC matches; nothing is unpickled.
    Anything else (a legacy pickle): read with ``torch.load(weights_only=True)``; a file that is refused as unsafe
    counts as whole here (its bytes are all there; :func:`load_visual_state` refuses it when it is used).
    Returns ``safetensors``, ``zip`` or ``pickle``.

    Raises:
        CorruptCheckpointError: the file is cut short or damaged.
        ZSBenchError: it is a web page.
    """
    p = Path(path)
    if looks_like_html(p):
        raise ZSBenchError(f"{p} is a web page, not weights")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if _sniff_safetensors(p):
            n = int.from_bytes(head, "little")
            try:
                header = json.loads(f.read(n))
                ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                raise corrupt(p, e) from None
            if 8 + n + max(ends, default=0) != size:
                raise corrupt(
                    p, ValueError(f"the header lists {8 + n + max(ends, default=0)} bytes, the file has {size}")
                )
            return "safetensors"
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise corrupt(p, e) from None
        if bad is not None:
            raise corrupt(p, ValueError(f"member {bad} fails its CRC check"))
        if not any(n.endswith("data.pkl") for n in names):
            raise corrupt(p, ValueError("a zip without data.pkl: not a torch.save archive"))
        return "zip"
    with contextlib.suppress(UnsafeCheckpointError):
        _torch_load(p)
    return "pickle"


def load_visual_state(path: str | os.PathLike, arch: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A state dict for open_clip's ``model.visual`` of ``arch`` from ours or a foreign checkpoint, and what it is.

    ``path``: our checkpoint folder (or its weights.safetensors) of a method that trains the whole image encoder; an
    official PMG-AFT / TeCoA file; a RobustVLM or other open_clip (visual or whole-model) state dict saved with
    ``torch.save``; or a plain safetensors state dict. ``info`` holds ``format``, ``checkpoint`` (``sha256:<hex>``
    of the file), ``stripped_prefixes``, ``ignored_keys`` (e.g. a text tower), ``num_tensors`` and, where the file
    records them, ``epoch`` / ``best_acc1`` / ``method`` / ``arch``. Load the result with :func:`apply_visual_state`.
    """
    p = Path(path)
    if not p.exists():
        raise ZSBenchError(f"{p}: no such checkpoint file or folder")
    info: dict = {"path": str(p)}
    if p.is_dir() or (p.suffix == ".safetensors" and is_ours(p.parent)):
        tensors, meta = load_checkpoint(p)
        trains = meta.get("trains")
        if trains not in (None, "image_encoder"):
            raise ZSBenchError(
                f"{p} holds a {meta.get('method', '?')} checkpoint that trains {trains}, not a whole image encoder; "
                f"evaluate it as --checkpoint {meta.get('method', 'METHOD')}={p}"
            )
        if arch is not None and meta.get("arch") not in (None, arch):
            raise ZSBenchError(f"{p} was trained from {meta['arch']}, not {arch}; pass --arch {meta['arch']}")
        info.update(
            format="robustbench_zs",
            checkpoint=f"sha256:{meta['weights_sha256']}",
            method=meta.get("method"),
            arch=meta.get("arch"),
        )
        raw: Mapping = tensors
    else:
        raw, found = _read_state_file(p)
        info.update(found, checkpoint=checkpoint_identity(p))
    state, notes = _visual_keys(raw, p)
    _check_finite(state, p)
    info.update(notes, num_tensors=len(state))
    return state, info


def apply_visual_state(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str | None = None) -> None:
    """Load ``state`` into ``model.visual`` (or ``model`` itself if it has no ``visual``), strictly.

    Every key of the tower must be present with the same shape and no key may be left over; otherwise a one-line
    :class:`ZSBenchError` says how many keys are missing / unexpected and where the first shape differs.
    """
    visual = getattr(model, "visual", model)
    own = visual.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, list(state[k].shape), list(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys e.g. {', '.join(unexpected[:3])}")
        if shapes:
            k, got, want = shapes[0]
            more = f" and {len(shapes) - 1} more" if len(shapes) > 1 else ""
            parts.append(f"shape mismatch at {k} (checkpoint {got} vs model {want}){more}")
        raise ZSBenchError(f"checkpoint is for another architecture than {arch or 'this model'}: {'; '.join(parts)}")
    check_state_tensors(state, own, f"checkpoint for {arch or 'this model'}")
    visual.load_state_dict(dict(state), strict=True)
