"""A zoo of published robust CLIP checkpoints: ``zsbench models list|download|verify`` and ``zoo:ID`` paths.

- :mod:`.registry`: the table (ids, sources, published sha256 where known, arch, method, eps, data, license, paper);
- :mod:`.fetch`: resumable, checked HTTP(S) downloads with the standard library;
- :mod:`.store`: the files under ``<models>/zoo/<id>/`` with their ``source.json``, :func:`verify` (sha256 and a
  safe load) and :func:`resolve_zoo_checkpoint`, which turns ``zoo:ID`` into the stored file;
- the ``zsbench models`` command is :mod:`robustbench_zs.cli.models`.
"""

from __future__ import annotations

from .registry import FORMATS, Source, ZooEntry, entries, get_entry
from .store import (
    MIRROR_ENV,
    LocalState,
    download,
    entry_dir,
    local_state,
    resolve_zoo_checkpoint,
    verify,
    zoo_root,
)

__all__ = [
    "FORMATS",
    "MIRROR_ENV",
    "LocalState",
    "Source",
    "ZooEntry",
    "download",
    "entries",
    "entry_dir",
    "get_entry",
    "local_state",
    "resolve_zoo_checkpoint",
    "verify",
    "zoo_root",
]
