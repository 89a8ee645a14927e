"""Tiny synthetic copies of the datasets, written in each dataset's real on-disk layout (for tests).

Every writer is deterministic in its ``seed`` and returns the dataset folder it created under ``root``.
The content helpers (:func:`cifar_arrays`, :func:`tinyimagenet_val_wnids`) are public so that tests can recompute
what was written without parsing the files the loaders read.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .spec import load_metadata

CIFAR_SIZE = 32
TINY_SIZE = 64
TINY_NUM_CLASSES = 200


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 pickler that writes ``bytes`` as Python 2 ``str`` (BINSTRING) and numpy under ``numpy.core``.

    This reproduces the files of the CIFAR python release, which were pickled by Python 2: Python 3's own protocol 2
    pickler would encode ``bytes`` through ``_codecs.encode`` instead, which real CIFAR files never contain.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        if module is not None and module.startswith("numpy._core"):
            # Python 2-era numpy lived at numpy.core; write the name the real files use.
            self.write(pickle.GLOBAL + b"numpy.core" + module[len("numpy._core") :].encode() + b"\n")
            self.write((name or obj.__qualname__).encode() + b"\n")  # type: ignore[attr-defined]
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type(len)] = save_global  # builtin functions such as numpy's _reconstruct


def dump_py2_pickle(obj: object, path: Path) -> None:
    """Write ``obj`` to ``path`` the way Python 2's ``cPickle.dump(obj, f, 2)`` did (``bytes`` as ``str``)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    Path(path).write_bytes(buf.getvalue())


def cifar_arrays(n: int, num_classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """The content of one fixture batch.

    Args:
        n: number of images.
        num_classes: labels are drawn from ``range(num_classes)``, as evenly as ``n`` allows.
        seed: random seed.

    Returns:
        ``(data, labels)``: uint8 rows (n, 3072) in CIFAR's channel-major order (the 1024 red values of the 32x32
        image in row-major order, then green, then blue) and a list of ``n`` int labels.
    """
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3 * CIFAR_SIZE * CIFAR_SIZE), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % num_classes)
    return data, [int(y) for y in labels]


def _cifar_batch(n: int, num_classes: int, seed: int, label_key: bytes, batch_label: str, prefix: str) -> dict:
    data, labels = cifar_arrays(n, num_classes, seed)
    batch = {
        b"batch_label": batch_label.encode(),
        label_key: labels,
        b"data": data,
        b"filenames": [f"{prefix}_{i:06d}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [y % 20 for y in labels]
    return batch


def write_cifar10(root: Path, n_test: int = 20, n_train_per_batch: int = 0, seed: int = 0) -> Path:
    """Write ``root/cifar-10-batches-py`` as in the CIFAR-10 python release.

    ``test_batch`` holds ``cifar_arrays(n_test, 10, seed)``; when ``n_train_per_batch > 0``, ``data_batch_<i>``
    (i = 1..5) holds ``cifar_arrays(n_train_per_batch, 10, seed + i)``. ``batches.meta`` holds the 10 label names.

    Args:
        root: data root (created if missing).
        n_test: images in the test batch.
        n_train_per_batch: images in each of the five training batches; 0 writes no training batches.
        seed: random seed of the content.

    Returns:
        The ``cifar-10-batches-py`` folder.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = load_metadata("cifar10_classnames")["classnames"]
    dump_py2_pickle(_cifar_batch(n_test, 10, seed, b"labels", "testing batch 1 of 1", "test"), folder / "test_batch")
    if n_train_per_batch > 0:
        for i in range(1, 6):
            batch = _cifar_batch(n_train_per_batch, 10, seed + i, b"labels", f"training batch {i} of 5", f"train{i}")
            dump_py2_pickle(batch, folder / f"data_batch_{i}")
    meta = {
        b"num_cases_per_batch": max(n_test, n_train_per_batch),
        b"label_names": [name.encode() for name in names],
        b"num_vis": 3 * CIFAR_SIZE * CIFAR_SIZE,
    }
    dump_py2_pickle(meta, folder / "batches.meta")
    return folder


def write_cifar100(root: Path, n_test: int = 20, n_train: int = 0, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python`` as in the CIFAR-100 python release.

    ``test`` holds ``cifar_arrays(n_test, 100, seed)``; when ``n_train > 0``, ``train`` holds
    ``cifar_arrays(n_train, 100, seed + 1)``. Coarse labels are placeholders (``fine % 20``). ``meta`` holds the
    100 fine label names and 20 placeholder coarse names.

    Args:
        root: data root (created if missing).
        n_test: images in the test file.
        n_train: images in the train file; 0 writes no train file.
        seed: random seed of the content.

    Returns:
        The ``cifar-100-python`` folder.
    """
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    names = load_metadata("cifar100_classnames")["classnames"]
    dump_py2_pickle(_cifar_batch(n_test, 100, seed, b"fine_labels", "testing batch 1 of 1", "test"), folder / "test")
    if n_train > 0:
        batch = _cifar_batch(n_train, 100, seed + 1, b"fine_labels", "training batch 1 of 1", "train")
        dump_py2_pickle(batch, folder / "train")
    meta = {
        b"fine_label_names": [name.encode() for name in names],
        b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)],
    }
    dump_py2_pickle(meta, folder / "meta")
    return folder


def default_tinyimagenet_wnids() -> list[str]:
    """The fixture's 200 wnids: the first 200 sorted wnids of the ImageNet name table."""
    return sorted(load_metadata("imagenet_wnid_to_name")["names"])[:TINY_NUM_CLASSES]


def tinyimagenet_val_wnids(wnids: Sequence[str], n_val_per_class: int, seed: int) -> list[str]:
    """The wnid of each fixture validation image: entry ``i`` is the class of ``val_<i>.JPEG``.

    Every wnid appears ``n_val_per_class`` times, in a seeded shuffled order (as in the real file).
    """
    order = np.random.default_rng([seed, 1]).permutation(len(wnids) * n_val_per_class)
    return [wnids[int(k) % len(wnids)] for k in order]


def _tiny_images(labels: Sequence[int], num_classes: int, seed: int) -> np.ndarray:
    """64x64 RGB uint8 images: a per-class colour gradient plus a little per-image noise."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng([seed, 2]).uniform(40, 215, size=(num_classes, 3))
    ramp = np.linspace(-30, 30, TINY_SIZE)
    base = colours[np.asarray(labels, dtype=np.int64)][:, None, None, :] + ramp[None, :, None, None]
    noise = rng.normal(0, 6, size=(len(labels), TINY_SIZE, TINY_SIZE, 3))
    return np.clip(base + noise, 0, 255).round().astype(np.uint8)


def _save_jpegs(images: np.ndarray, paths: Sequence[Path], gray: Sequence[int] = ()) -> None:
    """Save RGB arrays as JPEGs; the images at the ``gray`` positions are saved in mode ``L``."""
    for i, (img, path) in enumerate(zip(images, paths, strict=True)):
        im = Image.fromarray(img, mode="RGB")
        (im.convert("L") if i in gray else im).save(path, format="JPEG", quality=90)


def write_tinyimagenet(
    root: Path,
    n_val_per_class: int = 1,
    n_train_per_class: int = 0,
    seed: int = 0,
    wnids: Sequence[str] | None = None,
) -> Path:
    """Write ``root/tiny-imagenet-200`` in the layout of the stock ``tiny-imagenet-200.zip``.

    Files: ``wnids.txt`` (in a shuffled, non-sorted order), ``words.txt``,
    ``train/<wnid>/images/<wnid>_<i>.JPEG`` with ``train/<wnid>/<wnid>_boxes.txt``, ``val/images/val_<i>.JPEG``
    with ``val/val_annotations.txt`` (``val_<i>.JPEG\\t<wnid>\\t0\\t0\\t63\\t63``) and two
    ``test/images/test_<i>.JPEG``.
    The class of ``val_<i>.JPEG`` is ``tinyimagenet_val_wnids(wnids, n_val_per_class, seed)[i]``. Images are 64x64
    JPEGs whose colour depends on the class; ``val_0.JPEG`` is grayscale, as some images of the real archive are.

    Args:
        root: data root (created if missing).
        n_val_per_class: validation images per class.
        n_train_per_class: training images per class; with 0 the ``train/<wnid>/images`` folders are empty.
        seed: random seed of the content and of the file orders.
        wnids: the classes; default :func:`default_tinyimagenet_wnids`. Any count is written (to build bad layouts).

    Returns:
        The ``tiny-imagenet-200`` folder.
    """
    base = Path(root) / "tiny-imagenet-200"
    wnids = list(default_tinyimagenet_wnids() if wnids is None else wnids)
    table = load_metadata("imagenet_wnid_to_name")["names"]
    class_of = {w: i for i, w in enumerate(wnids)}
    rng = np.random.default_rng([seed, 0])

    base.mkdir(parents=True, exist_ok=True)
    shuffled = [wnids[int(k)] for k in rng.permutation(len(wnids))]
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in shuffled))
    (base / "words.txt").write_text("".join(f"{w}\t{table.get(w, w).replace('_', ' ')}\n" for w in sorted(wnids)))

    for w in wnids:
        images_dir = base / "train" / w / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        names = [f"{w}_{i}.JPEG" for i in range(n_train_per_class)]
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(f"{n}\t0\t0\t63\t63\n" for n in names))
        if names:
            images = _tiny_images([class_of[w]] * len(names), len(wnids), seed * 1000 + 1 + class_of[w])
            _save_jpegs(images, [images_dir / n for n in names])

    val_wnids = tinyimagenet_val_wnids(wnids, n_val_per_class, seed)
    val_dir = base / "val" / "images"
    val_dir.mkdir(parents=True, exist_ok=True)
    names = [f"val_{i}.JPEG" for i in range(len(val_wnids))]
    lines = "".join(f"{n}\t{w}\t0\t0\t63\t63\n" for n, w in zip(names, val_wnids, strict=True))
    (base / "val" / "val_annotations.txt").write_text(lines)
    val_images = _tiny_images([class_of[w] for w in val_wnids], len(wnids), seed * 1000)
    _save_jpegs(val_images, [val_dir / n for n in names], gray=(0,))

    test_dir = base / "test" / "images"
    test_dir.mkdir(parents=True, exist_ok=True)
    _save_jpegs(
        _tiny_images([0, 1], max(len(wnids), 2), seed * 1000 + 999), [test_dir / f"test_{i}.JPEG" for i in (0, 1)]
    )
    return base
