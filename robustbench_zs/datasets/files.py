"""Shared pieces of the file-based loaders: decoding, one-line layout errors, text and MATLAB metadata readers.

Every loader reads its dataset's real on-disk layout (torchvision's, where torchvision downloads it) and raises
:class:`DatasetNotFoundError` naming what is missing, the expected layout and where to get the data; corrupt
metadata or images raise :class:`ZSBenchError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image, UnidentifiedImageError
from scipy.io import loadmat

from ..errors import DatasetNotFoundError, ZSBenchError
from ..paths import is_inside
from ..provenance import sha256_file
from .spec import DatasetSpec, ImageDataset

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``Image.open(path)`` with one-line errors naming the file. An image over PIL's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels) is refused before it is decoded: no dataset of the benchmark
    holds one, and decoding it could take all the memory."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ZSBenchError(
            f"image {path} is larger than the {Image.MAX_IMAGE_PIXELS:,}-pixel limit of a decompression bomb; a "
            "damaged or hostile file: delete it or get a clean copy"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ZSBenchError(f"cannot decode image {path}: {e}; re-download or delete the file") from None


def decode_image(path: Path) -> torch.Tensor:
    """Decode an image file to a uint8 (3, H, W) tensor; a broken file is reported with its path."""
    with _opened(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` as an RGB PIL image (fully loaded); one-line error naming the file."""
    with _opened(path) as im:
        return im.convert("RGB")


class FileImageDataset(ImageDataset):
    """Images listed as (path, label), decoded on access.

    ``item_pil(i)`` gives the RGB PIL image, which the preprocessing profiles resize before tensor conversion.
    """

    def __init__(self, samples: list[tuple[Path, int]], classnames: list[str], root: Path) -> None:
        self.samples = samples
        self.classnames = classnames
        self.root = root

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return decode_image(path), label

    def item_pil(self, i: int) -> tuple[Image.Image, int]:
        path, label = self.samples[i]
        return open_rgb(path), label

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((y for _, y in self.samples), dtype=np.int64, count=len(self.samples))

    def fingerprint(self) -> str:
        """sha256 of every (file name, size in bytes, label): cheap, and it changes when a file is replaced."""
        if not hasattr(self, "_fingerprint"):
            h = hashlib.sha256()
            for path, label in self.samples:
                # the name's bytes as on disk: a name that is not UTF-8 is hashed as is (the same bytes as before
                # for every UTF-8 name)
                h.update(os.fsencode(path.relative_to(self.root)) + f"|{path.stat().st_size}|{label}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class ArrayFilesDataset(ImageDataset):
    """Base of splits stored as one image-array file plus one label file (STL-10's binaries, PCAM's HDF5).

    Subclasses set ``x_path``, ``y_path`` and ``_labels`` (int64, one per image) and implement ``__getitem__``.
    """

    x_path: Path
    y_path: Path
    _labels: np.ndarray

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def fingerprint(self) -> str:
        """sha256 over the sha256 of the label file and of the image file (each file hashed once per process)."""
        if not hasattr(self, "_fingerprint"):
            digests = "|".join(f"{p.name}:{sha256_file(p)}" for p in (self.y_path, self.x_path))
            self._fingerprint = hashlib.sha256(digests.encode()).hexdigest()
        return self._fingerprint


def _data_root(spec: DatasetSpec, base: Path) -> Path:
    """The data root above ``base`` (the folder holding the dataset's top folder ``spec.folder``)."""
    top = (spec.folder or "").split("/")[0]
    for p in (base, *base.parents):
        if top and p.name == top:
            return p.parent
    return base.parent if top else base


def missing(spec: DatasetSpec, base: Path, what: str) -> DatasetNotFoundError:
    """The one-line error for an absent or incomplete dataset folder, with the command (or the manual steps) that
    gets it into this data root."""
    root = _data_root(spec, Path(base))
    layout = spec.layout.replace("<data-root>", str(root))
    if spec.download is not None:
        how = f"get it with: zsbench datasets download {spec.id} --data-root {root}"
    elif spec.manual_steps:
        how = "get it by hand: " + " ".join(spec.manual_steps.replace("<data-root>", str(root)).split())
    else:
        how = f"get it from {spec.source}"
    return DatasetNotFoundError(
        f"{spec.name} not found or incomplete: {what} (under {base}); expected layout: {layout}; {how}"
    )


def no_split(spec: DatasetSpec, split: str) -> ZSBenchError:
    return ZSBenchError(f"{spec.name} has no split {split!r}; splits: {', '.join(spec.splits)}")


def require_files(spec: DatasetSpec, base: Path, names: Iterable[str]) -> None:
    """Raise :func:`missing` naming every entry of ``names`` (relative to ``base``) that does not exist."""
    if not base.is_dir():
        raise missing(spec, base, f"no folder {base.name}")
    absent = [n for n in names if not (base / n).exists()]
    if absent:
        raise missing(spec, base, f"missing {', '.join(absent)}")


def require_present(spec: DatasetSpec, base: Path, samples: list[tuple[Path, int]], listed_in: str) -> None:
    """Every listed image must lie inside ``base`` and exist; the error counts the absent ones and names the first."""
    outside = next((p for p, _ in samples if not is_inside(base, p)), None)
    if outside is not None:
        raise ZSBenchError(
            f"{listed_in} lists {str(outside)[:120]!r}, outside {base}; refusing it (a damaged or hostile file: get a "
            "clean copy)"
        )
    absent = [p for p, _ in samples if not p.is_file()]
    if absent:
        raise missing(spec, base, f"{len(absent)} images listed in {listed_in} are missing, e.g. {absent[0]}")
    if not samples:
        raise missing(spec, base, f"{listed_in} lists no images")


def read_text(path: Path) -> str:
    """A dataset's text file (annotations, class lists, JSON splits) as UTF-8; text in another encoding, or bytes
    that are no text at all, are one line naming the file and the first byte that does not decode."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        bad = e.object[e.start : e.start + 1].hex()
        raise ZSBenchError(
            f"corrupt metadata file {path}: not UTF-8 text (byte 0x{bad} at offset {e.start}); re-download it"
        ) from None


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file (see :func:`read_text`)."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def load_mat(path: Path) -> dict:
    """A MATLAB file read with scipy (``squeeze_me``); a corrupt file is one line naming it."""
    try:
        return loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, OSError, ... on broken files
        raise ZSBenchError(f"corrupt MATLAB file {path}: {e}; re-download it") from None


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (other files, such as the odd stray text file, are skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_class_count(spec: DatasetSpec, found: int, base: Path, what: str) -> None:
    if found != spec.num_classes:
        raise missing(spec, base, f"{what}: found {found} classes, expected {spec.num_classes}")


def torchvision_download(class_name: str, *calls: dict) -> callable:
    """A ``download(data_root)`` that runs ``torchvision.datasets.<class_name>(data_root, download=True, **kw)``
    once per ``kw`` in ``calls`` (e.g. one per split); a network or checksum failure is one line."""

    def download(data_root: Path) -> None:
        cls = getattr(tvd, class_name)
        Path(data_root).mkdir(parents=True, exist_ok=True)
        for kw in calls or ({},):
            try:
                cls(str(data_root), download=True, **kw)
            except Exception as e:  # URLError, RuntimeError (checksum), OSError (disk), ...
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ZSBenchError(f"torchvision's {class_name} download failed: {msg}") from None

    download.torchvision_class = class_name  # type: ignore[attr-defined]
    download.calls = calls  # type: ignore[attr-defined]
    return download
