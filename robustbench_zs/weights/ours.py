"""Our checkpoint: a folder with ``weights.safetensors`` and ``meta.json`` (format, size and sha256 of the weights).

Both files are written to a temporary name and moved into place (``os.replace``), weights first, so a reader never
sees half a file; :func:`load_checkpoint` reads the weights file once, checks its size and sha256 against meta.json
and builds the tensors from the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch

from ..atomic import write_text
from ..errors import OUT_HINT, ZSBenchError, writing
from ..paths import contained
from ..provenance import sha256_file
from .base import FORMAT, META_FILE, WEIGHTS_FILE, first_line, fsync_dir, write_safetensors

#: Keys of meta.json that :func:`save_checkpoint` sets (a caller's values for them are replaced).
_RESERVED = ("format", "weights_file", "weights_bytes", "weights_sha256")


def save_checkpoint(
    folder: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: dict, *, instead: str = OUT_HINT
) -> Path:
    """Write ``folder/weights.safetensors`` and ``folder/meta.json`` atomically; returns ``folder``.

    ``meta`` must be JSON-serializable; the written meta.json adds ``format``, ``weights_file``, ``weights_bytes`` and
    ``weights_sha256`` (the sha256 of the written weights file).
    """
    folder = Path(folder)
    json.dumps(meta)  # fail before writing anything if meta cannot be stored
    tmp = folder / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    with writing(folder / WEIGHTS_FILE, instead=instead, cleanup=(tmp,)):
        folder.mkdir(parents=True, exist_ok=True)
        # one metadata key: safetensors writes several in a random order, and the file's sha256 (the checkpoint's
        # identity in every record) would differ between two identical trainings
        sha, size = write_safetensors(tensors, tmp, metadata={"robustbench_zs": FORMAT})
        os.replace(tmp, folder / WEIGHTS_FILE)
    out = {k: v for k, v in meta.items() if k not in _RESERVED}
    out.update(format=FORMAT, weights_file=WEIGHTS_FILE, weights_bytes=size, weights_sha256=sha)
    write_text(folder / META_FILE, json.dumps(out, indent=2) + "\n", instead=instead)
    fsync_dir(folder)
    return folder


def read_meta(meta_path: Path) -> dict:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZSBenchError(
            f"cannot read {meta_path} ({first_line(e)}): the checkpoint folder is damaged; copy it again or re-train"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ZSBenchError(
            f"{meta_path}: not a robustbench_zs checkpoint (format {found!r}, expected {FORMAT!r}); foreign "
            "encoder files are read by load_visual_state"
        )
    return meta


def is_ours(folder: Path) -> bool:
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)`` of our checkpoint: ``path`` is its folder or its weights.safetensors.

    The weights file's size and sha256 must match meta.json; a truncated, corrupt or replaced file is a one-line
    :class:`ZSBenchError` naming it.
    """
    p = Path(path)
    if not p.exists():
        raise ZSBenchError(f"{p}: no such checkpoint folder or file")
    folder = p if p.is_dir() else p.parent
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise ZSBenchError(
            f"{p}: no {META_FILE} in {folder}, so not a robustbench_zs checkpoint (copy the whole folder; foreign "
            "encoder files are read by load_visual_state)"
        )
    meta = read_meta(meta_path)
    weights = contained(folder, str(meta.get("weights_file") or WEIGHTS_FILE), f"{meta_path}: weights_file")
    if not p.is_dir() and p.resolve() != weights.resolve():
        raise ZSBenchError(f"{p}: {meta_path} describes {weights.name}, not this file")
    if not weights.is_file():
        raise ZSBenchError(f"{weights} is missing though {META_FILE} is there: copy the whole checkpoint folder again")
    size = weights.stat().st_size
    expected_size = meta.get("weights_bytes")
    if expected_size is not None and size != expected_size:
        raise ZSBenchError(
            f"{weights} is {size} bytes but {META_FILE} says {expected_size}: the file is truncated or was replaced "
            "(an interrupted copy or save?); copy the checkpoint folder again or re-train"
        )
    try:
        data = weights.read_bytes()  # read once: the same bytes are hashed and turned into tensors
    except OSError as e:
        raise ZSBenchError(f"cannot read {weights} ({first_line(e)}): copy the checkpoint again or re-train") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha != meta.get("weights_sha256"):
        raise ZSBenchError(
            f"{weights}: sha256 {sha[:16]}... does not match {META_FILE} ({str(meta.get('weights_sha256'))[:16]}...): "
            "the file is corrupt or was modified; copy the checkpoint folder again or re-train"
        )
    try:
        loaded = safetensors.torch.load(data)
        tensors = {k: loaded[k] for k in sorted(loaded)}  # load() returns them in a random order; load_file sorts
    except Exception as e:  # safetensors raises its own error types
        raise ZSBenchError(f"cannot read {weights} ({first_line(e)}): copy the checkpoint again or re-train") from None
    return tensors, meta


def checkpoint_identity(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a checkpoint file (for our folders: of its weights file), for the records."""
    p = Path(path)
    if p.is_dir():
        name = WEIGHTS_FILE
        if (p / META_FILE).is_file():
            name = str(read_meta(p / META_FILE).get("weights_file") or WEIGHTS_FILE)
        p = contained(p, name, f"{p / META_FILE}: weights_file")
    if not p.is_file():
        raise ZSBenchError(f"{p}: no such checkpoint file")
    return f"sha256:{sha256_file(p)}"


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint named once: where it is, what it holds, and the sha256 that identifies it in every record.

    Build it with :meth:`of`: for our folder the identity is the sha256 that meta.json records (verified when the
    weights are read, by :func:`load_checkpoint`), so naming a checkpoint reads only its meta.json; for a foreign file
    it is the file's sha256, hashed once per process (:func:`~robustbench_zs.provenance.sha256_file` is memoized).
    """

    path: Path
    sha256: str
    #: ``meta.json`` of our folder; None for a foreign file
    meta: dict | None = field(default=None, compare=False)

    @classmethod
    def of(cls, path: str | os.PathLike) -> CheckpointRef:
        p = Path(path)
        if not p.exists():
            raise ZSBenchError(f"{p}: no such checkpoint file or folder")
        if p.is_dir() and (p / META_FILE).is_file():
            meta = read_meta(p / META_FILE)
            sha = meta.get("weights_sha256")
            if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
                raise ZSBenchError(
                    f"{p / META_FILE}: weights_sha256 {sha!r} is not a sha256; the checkpoint folder is damaged: "
                    "copy it again or re-train"
                )
            return cls(p, sha, meta)
        return cls(p, checkpoint_identity(p).removeprefix("sha256:"))

    @property
    def ours(self) -> bool:
        """Our checkpoint folder (meta.json beside the weights), not a foreign file."""
        return self.meta is not None

    @property
    def name(self) -> str:
        return self.path.name

    def identity(self) -> dict:
        """The record's identity fields of these weights."""
        return {"checkpoint": f"sha256:{self.sha256}", "checkpoint_name": self.name}
