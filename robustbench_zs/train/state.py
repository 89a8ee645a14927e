"""The training resume state, saved as one unit.

A save writes a whole new state folder (weights, optimizer tensors, ``state.json`` with the step, the run's
identity and the sha256 and size of each tensor file) under a temporary name, fsyncs every file and the folder,
renames the folder into place, and only then switches the one pointer file ``CURRENT`` to it (written to a temporary
name, fsynced, ``os.replace``'d). Older state folders are removed after the switch. Whatever instant a kill lands
on, ``CURRENT`` names either the previous complete state or the new complete one; a folder it does not name is
never read. A load checks the pointer, the format, each file's size and sha256, and the step; then the caller checks
the identity (:func:`identity_differences`) before using anything.

Layout::

    resume/
        CURRENT                         one line: the name of the current state folder
        step-00000120-<token>/
            weights.safetensors         Method.trained_state
            optimizer.safetensors       the optimizer's tensors
            state.json                  format, step, identity, files, optimizer (the JSON part), scaler
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import OUT_HINT, ZSBenchError, writing
from ..weights.base import fsync_dir, hash_and_sync, write_safetensors

FORMAT = "robustbench_zs-train-state-2"
POINTER = "CURRENT"
STATE_JSON = "state.json"
_NAME = re.compile(r"step-\d{8}-[0-9a-f]{8}")
_FILES = ("weights.safetensors", "optimizer.safetensors")


class ResumeStateError(ZSBenchError):
    """A resume state that cannot be used (damaged, foreign, or of another configuration)."""


def save_state(
    root: Path, step: int, weights: dict, optimizer: dict, rest: dict, identity: dict, *, instead: str = OUT_HINT
) -> Path:
    """Write a new complete state under ``root`` and make it the current one; returns its folder.

    Args:
        weights: the trained tensors; optimizer: the optimizer's tensors; rest: JSON-able extras (the optimizer's
            param groups, the grad scaler), stored in state.json beside the step and ``identity``.
    """
    root = Path(root)
    name = f"step-{step:08d}-{os.urandom(4).hex()}"
    tmp = root / f".{name}.tmp"
    try:
        _write(root, tmp, name, step, weights, optimizer, rest, identity, instead)
    except BaseException:
        # a kill leaves them instead: the next save prunes them
        shutil.rmtree(tmp, ignore_errors=True)
        if _current(root) != name:  # renamed but never made current: not a state any resume will read
            shutil.rmtree(root / name, ignore_errors=True)
        raise
    _prune(root, keep=name)
    return root / name


def _write(
    root: Path, tmp: Path, name: str, step: int, weights, optimizer, rest: dict, identity: dict, instead: str
) -> None:
    with writing(root, instead=instead, cleanup=(root / f".{POINTER}.tmp",)):
        root.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        files = {}
        for fname, tensors in zip(_FILES, (weights, optimizer), strict=True):
            sha, size = write_safetensors(tensors, tmp / fname)
            files[fname] = {"sha256": sha, "bytes": size}
        state = {"format": FORMAT, "step": step, "identity": identity, "files": files, **rest}
        with open(tmp / STATE_JSON, "w", encoding="utf-8") as f:
            f.write(json.dumps(state, default=float, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, root / name)
        fsync_dir(root)
        ptr = root / f".{POINTER}.tmp"
        with open(ptr, "w", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(ptr, root / POINTER)
        fsync_dir(root)


def _current(root: Path) -> str | None:
    """The name the pointer holds, or None where there is none that can be read."""
    try:
        return (root / POINTER).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _prune(root: Path, keep: str) -> None:
    """Remove every state folder but ``keep`` (older states, and the leftovers of a killed save)."""
    for p in root.iterdir():
        if p.name in (keep, POINTER) or not p.is_dir() or p.is_symlink():
            continue
        if _NAME.fullmatch(p.name) or (p.name.startswith(".step-") and p.name.endswith(".tmp")):
            shutil.rmtree(p, ignore_errors=True)


def has_state(root: Path) -> bool:
    """Whether ``root`` holds a resume state of any format (a current one, or an older version's files)."""
    root = Path(root)
    return (root / POINTER).exists() or (root / STATE_JSON).exists()


def load_state(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """``(weights, optimizer tensors, state)`` of the current state under ``root``, every file checked.

    A damaged or foreign state is a one-line :class:`ResumeStateError` that names the file and says to rerun with
    ``--fresh``.
    """
    root = Path(root)
    fresh = "rerun with --fresh to start this training over"
    if not (root / POINTER).exists():
        if (root / STATE_JSON).exists():
            raise ResumeStateError(
                f"{root}: a resume state in the older format (separate files that may be of different steps, so it "
                f"cannot be trusted); {fresh}"
            )
        raise ResumeStateError(f"{root}: no {POINTER} pointer; {fresh}")
    try:
        name = (root / POINTER).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ResumeStateError(f"cannot read {root / POINTER} ({type(e).__name__}); {fresh}") from None
    if not _NAME.fullmatch(name):
        raise ResumeStateError(f"{root / POINTER} names {name[:80]!r}, not a state folder of ours; {fresh}")
    folder = root / name
    if folder.is_symlink() or not folder.is_dir():
        raise ResumeStateError(f"{folder}: the current resume state is missing (or a link, never followed); {fresh}")
    try:
        state = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeStateError(f"cannot read {folder / STATE_JSON} ({type(e).__name__}); {fresh}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeStateError(f"{folder / STATE_JSON}: not a resume state of this version; {fresh}")
    step, files, identity = state.get("step"), state.get("files"), state.get("identity")
    if not isinstance(step, int) or isinstance(step, bool) or step < 1 or not name.startswith(f"step-{step:08d}-"):
        raise ResumeStateError(f"{folder / STATE_JSON}: its step {step!r} does not match the folder; {fresh}")
    if not isinstance(identity, dict) or not isinstance(files, dict) or sorted(files) != sorted(_FILES):
        raise ResumeStateError(f"{folder / STATE_JSON}: incomplete (identity or files missing); {fresh}")
    loaded = []
    for fname in _FILES:
        path, want = folder / fname, files[fname]
        if path.is_symlink() or not path.is_file():
            raise ResumeStateError(f"{path}: missing from the resume state; {fresh}")
        sha, size = hash_and_sync(path)
        if not isinstance(want, dict) or (sha, size) != (want.get("sha256"), want.get("bytes")):
            raise ResumeStateError(
                f"{path}: its size or sha256 differs from {STATE_JSON}, the file is damaged; {fresh}"
            )
        try:
            loaded.append(load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - any parse failure is the same damaged file
            raise ResumeStateError(f"{path}: unreadable ({type(e).__name__}); {fresh}") from None
    return loaded[0], loaded[1], state


def _flatten(d: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def identity_differences(saved: dict, wanted: dict) -> list[str]:
    """``key: saved -> wanted`` for every field of the run identity that differs, top-level fields first (JSON
    round trip first, so a tuple and a list, or an int and a float of equal value, are the same)."""
    a = _flatten(json.loads(json.dumps(saved, default=str)))
    b = _flatten(json.loads(json.dumps(wanted, default=str)))
    out = []
    for k in sorted(set(a) | set(b), key=lambda k: (k.count("."), k)):  # top-level fields (method, seed) first
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            out.append(f"{k}: {_short(a.get(k, '<absent>'))} -> {_short(b.get(k, '<absent>'))}")
    return out


def _short(v: object, limit: int = 40) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= limit else s[: limit - 3] + "..."
