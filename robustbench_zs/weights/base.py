"""What every reader and writer of weights shares: the format's names, its errors, and the low-level file steps."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from ..errors import ZSBenchError, follow_umask

#: ``format`` of our meta.json.
FORMAT = "robustbench_zs-checkpoint-1"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "meta.json"


class CheckpointFormatError(ZSBenchError):
    """A weights file that cannot be used: not a state dict, or (:class:`CorruptCheckpointError`) unreadable.

    ``reason`` is the short cause, for callers that word the message their own way.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class CorruptCheckpointError(CheckpointFormatError):
    """The file is truncated or corrupt (an interrupted download or copy)."""


class UnsafeCheckpointError(ZSBenchError):
    """A pickle that needs more than tensors and containers: loading it could run code, so it is refused."""


def first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line[:limit]}" if line else type(e).__name__


def corrupt(p: Path, e: BaseException) -> CorruptCheckpointError:
    reason = first_line(e)
    return CorruptCheckpointError(
        f"cannot read {p}: the file is truncated or corrupt ({reason}); download or copy it again", reason
    )


def hash_and_sync(path: Path) -> tuple[str, int]:
    """sha256 and size of ``path`` (read afresh, never memoized), flushed to disk."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
            size += len(block)
        os.fsync(f.fileno())
    return h.hexdigest(), size


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def cpu_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; any that share storage with an earlier one are copied (safetensors needs it)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise TypeError(
                f"checkpoint tensors must map str to Tensor, got {type(name).__name__} -> {type(t).__name__}"
            )
        t = t.detach().to("cpu").contiguous()
        if t.numel():
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
            else:
                seen.add(ptr)
        out[name] = t
    return out


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict | None = None) -> tuple[str, int]:
    """Write ``tensors`` to ``path`` (a temporary name the caller renames), following the umask; returns the file's
    sha256 and size, read back and synced to disk. A failed write is the OSError it was (a full disk is errno 28)."""
    try:
        safetensors.torch.save_file(cpu_tensors(tensors), str(path), metadata=metadata)
    except Exception as e:  # safetensors reports a failed write as SafetensorError("... (os error 28)")
        code = re.search(r"\(os error (\d+)\)", str(e))
        if isinstance(e, OSError) or code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
    follow_umask(path)
    return hash_and_sync(path)
