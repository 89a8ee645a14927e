"""The paper subsample is counted in the official PMG-AFT loader's image order, not ours.

The official validation loop (PMG_AFT.py, ``validate``) runs a ``DataLoader(shuffle=False, batch_size=256)`` over each
test set and evaluates only the batches whose index is a multiple of 20. The official code reads ImageNet and
TinyImageNet val with ``torchvision.datasets.ImageFolder`` over ``val/<wnid>/`` class folders, so those splits come in
(wnid, file name) order; every other dataset comes in the order of our loader. Here the official sequence is rebuilt
independently: ImageFolder over a class-folder copy (symlinks) of the fixture, or torchvision's own dataset class (the
replaced files of the official repository order the images as these stock classes do), and a DataLoader loop that
keeps batches 0, 20, 40, ...
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from dataset_fixtures import WRITERS, default_tinyimagenet_wnids
from dataset_fixtures.imagenet import imagenet_val_wnids
from PIL import Image
from torch.utils.data import DataLoader

from robustbench_zs.datasets import DATASETS
from robustbench_zs.datasets.subset import (
    IMAGEFOLDER_ORDER,
    LOADER_ORDER,
    OFFICIAL_ORDER,
    official_order,
    official_rule,
    paper_subsample,
    paper_subsample_of,
    select_subset,
)

PAPER_16 = [
    "cifar10", "cifar100", "stl10", "sun397", "food101", "oxfordpets", "flowers102", "dtd", "eurosat",
    "fgvc_aircraft", "tinyimagenet", "imagenet", "caltech101", "caltech256", "stanfordcars", "pcam",
]  # fmt: skip
IMAGEFOLDER = ["tinyimagenet", "imagenet"]
SAME_ORDER = [d for d in PAPER_16 if d not in IMAGEFOLDER]


def official_kept(sequence: list, every: int = 20, batch: int = 256) -> list:
    """The items of ``sequence`` the official loop evaluates: ``enumerate(DataLoader(..., shuffle=False))``, keeping
    the batches with ``i % every == 0``."""
    loader = DataLoader(sequence, batch_size=batch, shuffle=False, collate_fn=list)
    return [item for i, items in enumerate(loader) if i % every == 0 for item in items]


def symlink_class_folders(samples: list[tuple[Path, str]], dest: Path, nested: bool = False) -> Path:
    """``dest/<wnid>/<file name>`` (``dest/<wnid>/images/<file name>`` when ``nested``) -> each image: val reorganised
    into class folders, as the official code's ImageFolder needs."""
    for path, wnid in samples:
        folder = dest / wnid / "images" if nested else dest / wnid
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / path.name)
    return dest


def names_of(data, indices) -> list[str]:
    return [data.samples[int(i)][0].name for i in indices]


# --- TinyImageNet: more than 5,120 val images, so that several batches of 256 are kept ------------------------------

N_TINY = 10_300  # kept: official batches 0, 20 and 40 (the last one partial: 10,240..10,299)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """``tiny-imagenet-200`` with ``N_TINY`` val images (``val_0.JPEG`` ...) whose wnids are a seeded shuffle."""
    root = tmp_path_factory.mktemp("tiny_order")
    base = root / "tiny-imagenet-200"
    images = base / "val" / "images"
    images.mkdir(parents=True)
    wnids = default_tinyimagenet_wnids()
    assert len(wnids) == 200
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buf, format="JPEG")
    blob = buf.getvalue()
    rng = np.random.default_rng(7)
    val_wnids = [wnids[int(k) % len(wnids)] for k in rng.permutation(N_TINY)]
    lines = []
    for i, w in enumerate(val_wnids):
        (images / f"val_{i}.JPEG").write_bytes(blob)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t7\t7\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return root


@pytest.fixture(scope="module")
def tiny_data(tiny_root):
    spec = DATASETS.get("tinyimagenet")
    return spec.loader(tiny_root, spec.eval_split)


@pytest.mark.parametrize("nested", [False, True], ids=["val-wnid-files", "val-wnid-images-files"])
def test_tinyimagenet_keeps_the_official_imagefolder_batches(tiny_root, tiny_data, tmp_path, nested) -> None:
    spec = DATASETS.get("tinyimagenet")
    assert len(tiny_data) == N_TINY
    ann = (tiny_root / "tiny-imagenet-200" / "val" / "val_annotations.txt").read_text().splitlines()
    on_disk = [(tiny_root / "tiny-imagenet-200" / "val" / "images" / f, w) for f, w, *_ in (a.split("\t") for a in ann)]
    official = tvd.ImageFolder(str(symlink_class_folders(on_disk, tmp_path / "val", nested)))
    sequence = [Path(p).name for p, _ in official.samples]
    assert len(sequence) == N_TINY
    by_class: dict[int, list[str]] = {}
    for p, y in official.samples:
        by_class.setdefault(y, []).append(Path(p).name)
    assert all(v == sorted(v) for v in by_class.values())  # plain string order within a class ...
    assert any(v != sorted(v, key=lambda n: int(n[4:-5])) for v in by_class.values())  # ... not numeric order

    sub = paper_subsample_of(spec, tiny_data)
    want = official_kept(sequence)
    assert len(want) == 256 + 256 + (N_TINY - 10_240)
    assert sorted(names_of(tiny_data, sub.indices)) == sorted(want)
    assert np.all(np.diff(sub.indices) > 0) and sub.n == len(want) and sub.n_total == N_TINY
    assert sub.selection == "paper_subsample" and sub.order == IMAGEFOLDER_ORDER
    assert sub.to_dict()["paper_order"] == IMAGEFOLDER_ORDER

    # the whole permutation is the ImageFolder sequence, and ImageFolder's labels are ours
    perm = official_order(spec, tiny_data)
    assert names_of(tiny_data, perm) == sequence
    assert [tiny_data.samples[int(i)][1] for i in perm] == [y for _, y in official.samples]

    naive = paper_subsample(len(tiny_data))
    assert naive.n == sub.n and naive.sha256 != sub.sha256
    assert set(names_of(tiny_data, naive.indices)) != set(want)
    labels = tiny_data.labels
    assert len(set(labels[sub.indices])) < len(set(labels[naive.indices])) / 4  # blocks of classes vs all classes


# --- ImageNet: both layouts, a smaller split with smaller batches --------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_roots(tmp_path_factory) -> dict[str, Path]:
    roots = {}
    for layout in ("flat", "folders"):
        roots[layout] = tmp_path_factory.mktemp(f"imagenet_{layout}")
        WRITERS["imagenet"](roots[layout], seed=3, layout=layout, devkit="tar", n_per_class=2)
    return roots


def _imagenet_official(layout: str, root: Path, tmp_path: Path) -> tvd.ImageFolder:
    val = root / "imagenet" / "val"
    if layout == "folders":  # the official code's ImageFolder reads this layout as it is
        return tvd.ImageFolder(str(val))
    wnids = imagenet_val_wnids(2, seed=3)  # the fixture's ground truth: entry k - 1 is the wnid of image k
    on_disk = [(val / f"ILSVRC2012_val_{k:08d}.JPEG", w) for k, w in enumerate(wnids, 1)]
    return tvd.ImageFolder(str(symlink_class_folders(on_disk, tmp_path / "val")))


@pytest.mark.parametrize("layout", ["flat", "folders"])
@pytest.mark.parametrize(("every", "batch"), [(2, 8), (3, 50), (20, 256)])
def test_imagenet_keeps_the_official_imagefolder_batches(imagenet_roots, tmp_path, layout, every, batch) -> None:
    spec = DATASETS.get("imagenet")
    data = spec.loader(imagenet_roots[layout], spec.eval_split)
    assert len(data) == 2000
    official = _imagenet_official(layout, imagenet_roots[layout], tmp_path)
    sequence = [Path(p).name for p, _ in official.samples]
    perm = official_order(spec, data)
    assert names_of(data, perm) == sequence
    assert [data.samples[int(i)][1] for i in perm] == [y for _, y in official.samples]

    sub = paper_subsample_of(spec, data, every=every, batch=batch)
    want = official_kept(sequence, every, batch)
    assert sorted(names_of(data, sub.indices)) == sorted(want)
    assert np.all(np.diff(sub.indices) > 0) and sub.order == IMAGEFOLDER_ORDER
    naive = paper_subsample(len(data), every=every, batch=batch)
    assert naive.n == sub.n and set(names_of(data, naive.indices)) != set(want)


def test_imagenet_layouts_give_the_same_subsample(imagenet_roots) -> None:
    spec = DATASETS.get("imagenet")
    subs = {}
    for layout, root in imagenet_roots.items():
        data = spec.loader(root, spec.eval_split)
        sub = paper_subsample_of(spec, data, every=2, batch=8)
        subs[layout] = (sub.sha256, names_of(data, sub.indices))
    assert subs["flat"] == subs["folders"]


# --- every other dataset: the official loader's order is ours ------------------------------------------------------

#: writer keyword arguments giving a few images per class (within-class order matters)
WRITER_KW = {
    "cifar10": {"n_test": 40},
    "cifar100": {"n_test": 40},
    "stl10": {"n_test": 20, "n_train": 0},
    "sun397": {"n_per_class": 3},
    "food101": {"n_per_class": 2},
    "oxfordpets": {"n_per_class": 2},
    "flowers102": {"n_per_split": 2},
    "dtd": {"n_per_split": 2},
    "eurosat": {"n_per_class": 6},
    "fgvc_aircraft": {"n_per_class": 2},
    "caltech101": {"n_per_class": 3},
    "caltech256": {"n_per_class": 2},
    "stanfordcars": {"n_per_class": 2},
    "pcam": {"n_test": 16},
}


@pytest.fixture(scope="module")
def same_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("same_order")
    for ds_id in SAME_ORDER:
        WRITERS[ds_id](root, seed=5, **WRITER_KW[ds_id])
    return root


def test_the_order_table_covers_the_sixteen_datasets() -> None:
    assert set(PAPER_16) <= set(DATASETS.names()) and sorted(WRITER_KW) == sorted(SAME_ORDER)
    assert {k for k, v in OFFICIAL_ORDER.items() if v.order is not None} == set(IMAGEFOLDER)
    for ds_id in SAME_ORDER:
        assert official_rule(ds_id).order is None
    assert official_rule("cifar10").rule == LOADER_ORDER and official_rule("synthetic").rule == LOADER_ORDER
    assert "not reproducible" in official_rule("sun397").rule


@pytest.mark.parametrize("ds_id", SAME_ORDER)
def test_official_order_is_the_identity(same_root, ds_id) -> None:
    spec = DATASETS.get(ds_id)
    data = spec.loader(same_root, spec.eval_split)
    assert np.array_equal(official_order(spec, data), np.arange(len(data)))
    sub, naive = paper_subsample_of(spec, data, every=2, batch=3), paper_subsample(len(data), every=2, batch=3)
    assert sub.sha256 == naive.sha256 and np.array_equal(sub.indices, naive.indices)
    assert sub.order == official_rule(spec).rule and sub.to_dict()["paper_order"] == sub.order


def _torchvision_sequence(ds_id: str, root: Path) -> list[Path]:
    """The image files of the split in the order of torchvision's class (the official repository's replaced files
    order these splits the same way); checksum checks are patched out, as the fixtures are not the real files."""
    r = str(root)
    if ds_id == "eurosat":
        return [Path(p) for p, _ in tvd.EuroSAT(r).samples]
    if ds_id == "food101":
        return list(tvd.Food101(r, split="test")._image_files)
    if ds_id == "dtd":
        return list(tvd.DTD(r, split="test")._image_files)
    if ds_id == "oxfordpets":
        return list(tvd.OxfordIIITPet(r, split="test")._images)
    if ds_id == "fgvc_aircraft":
        return [Path(p) for p in tvd.FGVCAircraft(r, split="test")._image_files]
    if ds_id == "sun397":
        return list(tvd.SUN397(r)._image_files)
    if ds_id == "stanfordcars":
        return [Path(p) for p, _ in tvd.StanfordCars(r, split="test")._samples]
    if ds_id == "flowers102":
        with mock.patch.object(tvd.Flowers102, "_check_integrity", lambda self: True):
            return list(tvd.Flowers102(r, split="test")._image_files)
    if ds_id == "caltech101":
        d = tvd.Caltech101(r)
        cats = Path(d.root) / "101_ObjectCategories"
        return [cats / d.categories[y] / f"image_{i:04d}.jpg" for y, i in zip(d.y, d.index, strict=True)]
    if ds_id == "caltech256":
        d = tvd.Caltech256(r)
        cats = Path(d.root) / "256_ObjectCategories"
        return [cats / d.categories[y] / f"{y + 1:03d}_{i:04d}.jpg" for y, i in zip(d.y, d.index, strict=True)]
    raise KeyError(ds_id)


@pytest.mark.parametrize("ds_id", [d for d in SAME_ORDER if d not in ("cifar10", "cifar100", "stl10", "pcam")])
def test_torchvision_lists_the_files_in_our_order(same_root, ds_id) -> None:
    spec = DATASETS.get(ds_id)
    data = spec.loader(same_root, spec.eval_split)
    ours = [p for p, _ in data.samples]
    theirs = [Path(p) for p in _torchvision_sequence(ds_id, same_root)]
    assert sorted(theirs) == sorted(ours)  # the same images
    if ds_id == "sun397":  # Path.rglob: directory-entry order, which depends on the filesystem, not on the names
        return
    assert theirs == ours


@pytest.mark.parametrize("ds_id", ["cifar10", "cifar100", "stl10", "pcam"])
def test_torchvision_reads_the_arrays_in_our_order(same_root, ds_id) -> None:
    import torchvision.datasets.cifar as tv_cifar

    spec = DATASETS.get(ds_id)
    data = spec.loader(same_root, spec.eval_split)
    r = str(same_root)
    if ds_id in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if ds_id == "cifar10" else tvd.CIFAR100
        with (
            mock.patch.object(cls, "_check_integrity", lambda self: True),
            mock.patch.object(tv_cifar, "check_integrity", lambda *a, **k: True),
        ):
            d = cls(r, train=False)
        images, labels = torch.from_numpy(d.data.transpose(0, 3, 1, 2).copy()), list(d.targets)
    elif ds_id == "stl10":
        with mock.patch.object(tvd.STL10, "_check_integrity", lambda self: True):
            d = tvd.STL10(r, split="test")
        images, labels = torch.from_numpy(d.data.copy()), d.labels.tolist()
    else:
        d = tvd.PCAM(r, split="test")
        items = [d[i] for i in range(len(d))]
        images = torch.stack([torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy()) for im, _ in items])
        labels = [int(y) for _, y in items]
    assert len(labels) == len(data)
    assert labels == [data[i][1] for i in range(len(data))]
    assert all(torch.equal(images[i], data[i][0]) for i in range(len(data)))


# --- records --------------------------------------------------------------------------------------------------------


def test_paper_order_is_recorded_for_paper_subsamples_only() -> None:
    assert list(select_subset(100, None, 0).to_dict()) == ["n", "n_total", "seed", "indices_sha256", "selection"]
    assert list(select_subset(100, 10, 0).to_dict()) == ["n", "n_total", "seed", "indices_sha256", "selection"]
    naive = paper_subsample(10_000)
    assert naive.n == 512 and naive.to_dict()["paper_order"] == "split"
    assert np.array_equal(naive.indices, np.r_[0:256, 5120:5376])


def test_imagefolder_order_needs_samples_and_wnids() -> None:
    from robustbench_zs.datasets import TensorImageDataset

    data = TensorImageDataset(np.zeros((3, 3, 2, 2), np.uint8), np.zeros(3), ["a"], None)
    assert np.array_equal(official_order("cifar10", data), np.arange(3))
    with pytest.raises(TypeError, match="wnids"):
        official_order("imagenet", data)
