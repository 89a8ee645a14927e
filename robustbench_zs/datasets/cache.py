"""Decoded-tensor cache: each (dataset, split, preprocessing) stored once as memory-mapped uint8 tensors.

Evaluating several methods and eps on the same images would otherwise decode and resize the same JPEGs again for
every (method, threat). The cache holds one ``(N, 3, H, W)`` uint8 array per (content fingerprint, split,
preprocessing), filled lazily: only the images a run needs are decoded (a ``--n`` subset fills just those rows), and
later runs read the rows straight from the memory map without opening an image file.

Layout: ``<cache>/tensors/<key[:24]>/{meta.json, images.u8, labels.npy, filled.npy}``. ``images.u8`` is a sparse file
(rows not yet decoded take no disk space). ``filled.npy`` is rewritten atomically after each flushed chunk, so an
interrupted fill keeps every finished row and never marks an unwritten one. The key is the sha256 of the format
version, dataset id, split, content fingerprint, preprocessing description and output shape; ``meta.json`` repeats
it and a mismatch (or a damaged file) rebuilds the entry.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data import Subset as TorchSubset

from ..atomic import write_text
from ..errors import ZSBenchError, writing
from ..progress import Progress
from .files import FileImageDataset
from .preprocess import Preprocess, PreprocessedDataset
from .spec import DatasetSpec, ImageDataset

CACHE_FORMAT = 1
CHUNK = 512
#: what to do when the cache cannot be written (a full, read-only or forbidden disk)
CACHE_HINT = "set ZSBENCH_CACHE to another folder or run with --no-tensor-cache"


def cache_key(spec: DatasetSpec, split: str, data: ImageDataset, preprocess: Preprocess) -> str:
    shape = [len(data), 3, *preprocess.output_size(spec)]
    ident = {
        "format": CACHE_FORMAT,
        "dataset": spec.id,
        "split": split,
        "content_sha256": data.fingerprint(),
        "preprocess": preprocess.describe(spec),
        "shape": shape,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def worth_caching(data: ImageDataset, preprocess: Preprocess) -> bool:
    """Files to decode, or images to resize: cache. Arrays already in memory or memory-mapped at native size: no."""
    return isinstance(data, FileImageDataset) or not preprocess.is_native


class CachedImages(Dataset):
    """Rows of a cache entry, indexed like the source split; items are (uint8 tensor (3, H, W), label).

    The memory map is opened lazily in each process, so the dataset pickles cheaply into DataLoader workers.
    """

    def __init__(self, folder: Path, shape: tuple[int, ...], labels: np.ndarray, filled: np.ndarray) -> None:
        self.folder = folder
        self.shape = tuple(shape)
        self.labels = labels
        self.filled = filled
        self._mm: np.memmap | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mm": None}

    def _map(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.folder / "images.u8", dtype=np.uint8, mode="r", shape=self.shape)
        return self._mm

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not self.filled[i]:
            raise IndexError(f"image {i} is not in the tensor cache {self.folder}")
        return torch.from_numpy(np.array(self._map()[i])), int(self.labels[i])

    def take(self, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Rows ``indices`` as one (N, 3, H, W) uint8 tensor and their labels: one gather from the memory map, for
        training batches (the same images as ``[self[i] for i in indices]``, without a copy per image)."""
        indices = np.asarray(indices, dtype=np.int64)
        missing = indices[~self.filled[indices]]
        if len(missing):
            raise IndexError(f"image {int(missing[0])} is not in the tensor cache {self.folder}")
        return torch.from_numpy(self._map()[indices]), self.labels[indices]


class TensorCache:
    """The cache under ``root`` (``<cache dir>/tensors``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, key: str) -> Path:
        return self.root / key[:24]

    def _read(self, folder: Path, key: str, shape: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            if meta.get("key") != key or list(meta.get("shape", [])) != shape:
                return None
            if (folder / "images.u8").stat().st_size != int(np.prod(shape)):
                return None
            labels = np.load(folder / "labels.npy", allow_pickle=False)
            filled = np.load(folder / "filled.npy", allow_pickle=False)
        except (OSError, ValueError, json.JSONDecodeError):
            return None
        if labels.shape != (shape[0],) or filled.shape != (shape[0],) or filled.dtype != bool:
            return None
        return labels, filled

    def _create(self, folder: Path, key: str, shape: list[int], meta: dict) -> tuple[np.ndarray, np.ndarray]:
        """A new entry, built in a temporary folder beside ``folder`` and renamed into place whole: two processes that
        create one entry at once never delete or write into each other's files (the loser of the rename takes the
        winner's entry). An entry that :meth:`_read` refused (another key or shape, torn files) is moved aside first.
        """
        if folder.exists():
            stale = folder.with_name(f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}.stale")
            with contextlib.suppress(OSError):  # another process may have moved or replaced it already
                os.rename(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
        with writing(folder, instead=CACHE_HINT):
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{os.getpid()}.", suffix=".tmp", dir=folder.parent))
        try:
            with writing(tmp / "images.u8", instead=CACHE_HINT), open(tmp / "images.u8", "wb") as f:
                f.truncate(int(np.prod(shape)))  # sparse: rows cost disk space only once written
            labels = np.full(shape[0], -1, dtype=np.int64)
            filled = np.zeros(shape[0], dtype=bool)
            _save_npy(tmp / "labels.npy", labels)
            _save_npy(tmp / "filled.npy", filled)
            _atomic_write(tmp / "meta.json", json.dumps({**meta, "key": key, "shape": shape}, indent=1))
            try:
                os.rename(tmp, folder)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # another process put its entry in place first: ours goes, theirs is used (it may be filling it)
                shutil.rmtree(tmp, ignore_errors=True)
                state = self._read(folder, key, shape)
                if state is None:
                    raise OSError(errno.EEXIST, "another process left an entry that cannot be read") from None
                return state
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return labels, filled

    def prepare(
        self,
        spec: DatasetSpec,
        split: str,
        data: ImageDataset,
        preprocess: Preprocess,
        indices: np.ndarray,
        *,
        workers: int = 0,
        progress: bool | None = None,
    ) -> tuple[CachedImages, dict]:
        """A dataset over the cache entry of (``data``, ``preprocess``) with every row of ``indices`` filled.

        Returns the dataset and ``{"key", "folder", "decoded"}`` (decoded = images decoded in this call; 0 on a hit).
        """
        size = preprocess.output_size(spec)
        if size is None:
            raise ValueError("only fixed-size outputs can be cached")
        shape = [len(data), 3, *size]
        key = cache_key(spec, split, data, preprocess)
        folder = self.folder(key)
        try:
            state = self._read(folder, key, shape)
            if state is None:
                meta = {"dataset": spec.id, "split": split, "preprocess": preprocess.describe(spec)}
                state = self._create(folder, key, shape, meta)
            labels, filled = state
            todo = np.asarray(indices, dtype=np.int64)
            todo = todo[~filled[todo]]
            if len(todo):
                source = PreprocessedDataset(data, preprocess)
                desc = f"decode {spec.id}/{split} into the tensor cache"
                self._fill(folder, shape, labels, filled, source, todo, workers, (progress, desc))
        except OSError as e:
            raise ZSBenchError(
                f"tensor cache {folder}: {e.strerror or e}; free disk space, set ZSBENCH_CACHE to another folder, "
                "or run with --no-tensor-cache"
            ) from None
        return CachedImages(folder, tuple(shape), labels, filled), {
            "key": key,
            "folder": str(folder),
            "decoded": int(len(todo)),
        }

    def _fill(self, folder, shape, labels, filled, source, todo, workers, progress: tuple[bool | None, str]) -> None:
        # rows go in with pwrite, not through a writable memory map: on a full disk a write into a mapped sparse file
        # kills the process with SIGBUS, while pwrite fails with ENOSPC, which becomes a one-line error
        images = folder / "images.u8"
        row_bytes = int(np.prod(shape[1:]))
        loader = DataLoader(TorchSubset(source, todo.tolist()), batch_size=64, num_workers=workers)
        pos = 0
        pending = 0
        with writing(images, instead=CACHE_HINT):
            fd = os.open(images, os.O_WRONLY)
        try:
            bar = Progress(len(todo), progress[1], "images", show=progress[0])
            for batch, ys in loader:
                rows = todo[pos : pos + len(ys)]
                block = np.ascontiguousarray(batch.numpy(), dtype=np.uint8).reshape(len(ys), row_bytes)
                with writing(images, instead=CACHE_HINT):
                    for row, data in zip(rows, block, strict=True):
                        _pwrite_all(fd, data.tobytes(), int(row) * row_bytes)
                labels[rows] = ys.numpy()
                pos += len(ys)
                pending += len(ys)
                bar.update(len(ys))
                if pending >= CHUNK:
                    self._commit(folder, fd, labels, filled, todo[:pos])
                    pending = 0
            bar.close()
        finally:
            try:
                if pos:
                    self._commit(folder, fd, labels, filled, todo[:pos])
            finally:
                os.close(fd)

    @staticmethod
    def _commit(folder: Path, fd: int, labels: np.ndarray, filled: np.ndarray, done: np.ndarray) -> None:
        """Flush the written rows, then mark them filled (merging rows another process may have filled meanwhile)."""
        with writing(folder / "images.u8", instead=CACHE_HINT):
            os.fsync(fd)
        filled[done] = True
        try:
            on_disk = np.load(folder / "filled.npy", allow_pickle=False)
            other_labels = np.load(folder / "labels.npy", allow_pickle=False)
            if on_disk.shape == filled.shape:
                extra = on_disk & ~filled
                labels[extra] = other_labels[extra]
                filled |= on_disk
        except (OSError, ValueError):
            pass
        _save_npy(folder / "labels.npy", labels)
        _save_npy(folder / "filled.npy", filled)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _atomic_write(path: Path, text: str) -> None:
    write_text(path, text, instead=CACHE_HINT)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    with writing(path, instead=CACHE_HINT, cleanup=(tmp,)):
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, path)
