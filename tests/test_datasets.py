"""Dataset loaders against fixtures written in each dataset's real on-disk layout."""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_fixtures import (
    cifar_arrays,
    default_tinyimagenet_wnids,
    dump_py2_pickle,
    tinyimagenet_val_wnids,
    write_cifar10,
    write_cifar100,
    write_tinyimagenet,
)
from dataset_fixtures.common import assert_missing_message

import robustbench_zs.datasets  # noqa: F401  (registers the datasets)
from robustbench_zs.datasets import DATASETS, GENERIC_TEMPLATE, select_subset
from robustbench_zs.datasets.spec import load_metadata
from robustbench_zs.datasets.subset import indices_sha256
from robustbench_zs.errors import DatasetNotFoundError, ZSBenchError

WNID_TABLE = load_metadata("imagenet_wnid_to_name")["names"]


def _assert_layout_message(err: pytest.ExceptionInfo, spec_id: str) -> None:
    assert_missing_message(str(err.value), DATASETS.get(spec_id))


# --------------------------------------------------------------------------------------------------------- CIFAR


def _expected_cifar(spec_id: str, split: str, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """What the fixture writers put in a split (n = images per file)."""
    if spec_id == "cifar10":
        seeds = [seed] if split == "test" else [seed + i for i in range(1, 6)]
        parts = [cifar_arrays(n, 10, s) for s in seeds]
        return np.concatenate([d for d, _ in parts]), [y for _, ys in parts for y in ys]
    return cifar_arrays(n, 100, seed if split == "test" else seed + 1)


@pytest.mark.parametrize(
    ("spec_id", "split", "n"),
    [("cifar10", "test", 20), ("cifar10", "train", 3), ("cifar100", "test", 20), ("cifar100", "train", 7)],
)
def test_cifar_fixture_round_trips(tmp_path: Path, spec_id: str, split: str, n: int) -> None:
    if spec_id == "cifar10":
        folder = write_cifar10(tmp_path, n_test=20, n_train_per_batch=3, seed=5)
    else:
        folder = write_cifar100(tmp_path, n_test=20, n_train=7, seed=5)
    spec = DATASETS.get(spec_id)
    ds = spec.loader(tmp_path, split)
    data, labels = _expected_cifar(spec_id, split, n, seed=5)

    assert len(ds) == len(labels) == len(data)
    assert ds.root == folder
    assert [ds[i][1] for i in range(len(ds))] == labels
    for i in range(len(ds)):
        img, _ = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
        assert torch.equal(img, torch.from_numpy(data[i].reshape(3, 32, 32)))
    # Channel-major rows: R plane, then G, then B, each 32x32 row-major.
    img, row = ds[0][0], data[0]
    assert img[0, 0, 0] == row[0] and img[0, 0, 31] == row[31] and img[0, 1, 0] == row[32]
    assert img[1, 0, 0] == row[1024] and img[2, 0, 0] == row[2048] and img[2, 31, 31] == row[3071]

    assert len(ds.classnames) == spec.num_classes
    assert ds.classnames == load_metadata(f"{spec_id}_classnames")["classnames"]


def test_cifar_fixture_matches_release_format(tmp_path: Path) -> None:
    """The files read like the real release with the recipe of the CIFAR page (``encoding='bytes'``)."""
    folder = write_cifar10(tmp_path, n_test=4)
    with open(folder / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (4, 3072)
    with open(folder / "batches.meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert meta[b"label_names"][0] == b"airplane" and meta[b"num_vis"] == 3072

    folder = write_cifar100(tmp_path, n_test=4)
    with open(folder / "test", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert set(batch) == {b"batch_label", b"fine_labels", b"coarse_labels", b"data", b"filenames"}
    with open(folder / "meta", "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20


def test_cifar_fixture_is_deterministic(tmp_path: Path) -> None:
    a = write_cifar10(tmp_path / "a", n_test=6, seed=1)
    b = write_cifar10(tmp_path / "b", n_test=6, seed=1)
    c = write_cifar10(tmp_path / "c", n_test=6, seed=2)
    assert (a / "test_batch").read_bytes() == (b / "test_batch").read_bytes()
    assert (a / "test_batch").read_bytes() != (c / "test_batch").read_bytes()


@pytest.mark.parametrize("spec_id", ["cifar10", "cifar100", "tinyimagenet"])
def test_missing_root(tmp_path: Path, spec_id: str) -> None:
    spec = DATASETS.get(spec_id)
    with pytest.raises(DatasetNotFoundError) as err:
        spec.loader(tmp_path / "nowhere", spec.eval_split)
    _assert_layout_message(err, spec_id)


@pytest.mark.parametrize(("spec_id", "missing"), [("cifar10", "test_batch"), ("cifar100", "test")])
def test_cifar_without_test_file(tmp_path: Path, spec_id: str, missing: str) -> None:
    folder = (write_cifar10 if spec_id == "cifar10" else write_cifar100)(tmp_path)
    (folder / missing).unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        DATASETS.get(spec_id).loader(tmp_path, "test")
    assert missing in str(err.value)
    _assert_layout_message(err, spec_id)


def test_cifar_train_split_absent(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_train_per_batch=0)
    with pytest.raises(DatasetNotFoundError, match="data_batch_1") as err:
        DATASETS.get("cifar10").loader(tmp_path, "train")
    _assert_layout_message(err, "cifar10")


class _Payload:
    """Unpickling this object runs ``func(arg)``."""

    def __init__(self, func, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, f"touch {shlex.quote(str(marker))}"),
        "exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("kind", ["os.system", "exec"])
@pytest.mark.parametrize("target", ["test_batch", "batches.meta"])
def test_cifar_malicious_pickle_is_refused(tmp_path: Path, kind: str, target: str) -> None:
    folder = write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    if target == "test_batch":
        data, labels = cifar_arrays(20, 10, 0)
        obj = {b"batch_label": b"x", b"labels": labels, b"data": data, b"extra": payload}
    else:
        obj = {b"label_names": payload, b"num_vis": 3072}
    dump_py2_pickle(obj, folder / target)

    # Control: the payload is live under a plain pickle.load.
    with open(folder / target, "rb") as f:
        pickle.load(f, encoding="latin1")
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ZSBenchError, match="refusing") as err:
        DATASETS.get("cifar10").loader(tmp_path / "data", "test")
    assert str(folder / target) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("garbage", [b"", b"not a pickle at all", b"\x80\x02}q\x00(U\x04data"])
def test_cifar_corrupt_pickle(tmp_path: Path, garbage: bytes) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(garbage)
    with pytest.raises(ZSBenchError, match="corrupt CIFAR file"):
        DATASETS.get("cifar10").loader(tmp_path, "test")


# Malformed CIFAR contents and unknown splits: one-line errors, never a raw exception.
def test_cifar_data_label_length_mismatch_is_refused(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, n_test=4)
    data, labels = cifar_arrays(4, 10, 0)
    dump_py2_pickle({b"data": data, b"labels": labels + [1, 2]}, folder / "test_batch")
    with pytest.raises(ZSBenchError):
        DATASETS.get("cifar10").loader(tmp_path, "test")


@pytest.mark.parametrize("case", ["rows_not_3072", "not_a_dict", "text_labels", "empty_batch"])
def test_cifar_malformed_contents_raise_zsbencherror(tmp_path: Path, case: str) -> None:
    folder = write_cifar10(tmp_path, n_test=4)
    data, labels = cifar_arrays(4, 10, 0)
    obj = {
        "rows_not_3072": {b"data": data[:, :3000], b"labels": labels},
        "not_a_dict": [data, labels],
        "text_labels": {b"data": data, b"labels": b"abcd"},
        "empty_batch": {b"data": data[:0], b"labels": []},
    }[case]
    dump_py2_pickle(obj, folder / "test_batch")
    with pytest.raises(ZSBenchError):
        DATASETS.get("cifar10").loader(tmp_path, "test")


@pytest.mark.parametrize("spec_id", ["cifar10", "synthetic"])
def test_unknown_split_raises_zsbencherror(tmp_path: Path, spec_id: str) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(ZSBenchError):
        DATASETS.get(spec_id).loader(tmp_path, "validation")


# --------------------------------------------------------------------------------------------------- TinyImageNet

TINY_SEED = 3


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_tinyimagenet(root, n_val_per_class=1, n_train_per_class=1, seed=TINY_SEED)
    return root


@pytest.fixture
def tiny_copy(tiny_root: Path, tmp_path: Path) -> Path:
    """A private copy of the TinyImageNet fixture that a test may break."""
    shutil.copytree(tiny_root / "tiny-imagenet-200", tmp_path / "tiny-imagenet-200")
    return tmp_path


def _annotations(base: Path) -> dict[str, str]:
    lines = (base / "val" / "val_annotations.txt").read_text().splitlines()
    return {parts[0]: parts[1] for parts in (line.split("\t") for line in lines)}


def test_tinyimagenet_fixture_layout(tiny_root: Path) -> None:
    base = tiny_root / "tiny-imagenet-200"
    listed = (base / "wnids.txt").read_text().split()
    assert len(listed) == 200 and listed != sorted(listed) and set(listed) == set(default_tinyimagenet_wnids())
    assert len((base / "words.txt").read_text().splitlines()) == 200
    w = listed[0]
    assert (base / "train" / w / "images" / f"{w}_0.JPEG").is_file()
    assert (base / "train" / w / f"{w}_boxes.txt").read_text() == f"{w}_0.JPEG\t0\t0\t63\t63\n"
    assert len(list((base / "test" / "images").glob("test_*.JPEG"))) == 2
    first = (base / "val" / "val_annotations.txt").read_text().splitlines()[0]
    assert first.startswith("val_0.JPEG\t") and first.endswith("\t0\t0\t63\t63")


def test_tinyimagenet_val_loads(tiny_root: Path) -> None:
    spec = DATASETS.get("tinyimagenet")
    ds = spec.loader(tiny_root, "val")
    base = tiny_root / "tiny-imagenet-200"
    wnids = sorted(default_tinyimagenet_wnids())
    ann = _annotations(base)
    written = tinyimagenet_val_wnids(default_tinyimagenet_wnids(), 1, TINY_SEED)

    assert spec.num_classes == 200 and len(ds.classnames) == 200
    assert ds.root == base
    assert len(ds) == 200
    for i in range(len(ds)):
        path, label = ds.samples[i]
        assert label == wnids.index(ann[path.name])
        assert ann[path.name] == written[int(path.stem.split("_")[1])]
        img, item_label = ds[i]
        assert item_label == label
        assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)  # val_0.JPEG is grayscale on disk
    assert sorted(label for _, label in ds.samples) == list(range(200))

    assert ds.classnames == [WNID_TABLE[w] for w in wnids]
    assert ds.classnames[wnids.index("n01443537")] == "goldfish"
    assert spec.prompt_classnames(ds.classnames)[wnids.index("n02099601")] == "golden retriever"


def test_tinyimagenet_train_loads(tiny_root: Path) -> None:
    ds = DATASETS.get("tinyimagenet").loader(tiny_root, "train")
    wnids = sorted(default_tinyimagenet_wnids())
    assert len(ds) == 200
    for path, label in ds.samples:
        assert label == wnids.index(path.parent.parent.name)
    img, _ = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)


def test_tinyimagenet_without_annotations(tiny_copy: Path) -> None:
    (tiny_copy / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="val_annotations.txt") as err:
        DATASETS.get("tinyimagenet").loader(tiny_copy, "val")
    _assert_layout_message(err, "tinyimagenet")


def test_tinyimagenet_annotation_lists_missing_image(tiny_copy: Path) -> None:
    (tiny_copy / "tiny-imagenet-200" / "val" / "images" / "val_7.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match="val_7.JPEG") as err:
        DATASETS.get("tinyimagenet").loader(tiny_copy, "val")
    _assert_layout_message(err, "tinyimagenet")


def test_tinyimagenet_with_199_wnids(tiny_copy: Path) -> None:
    wnids_file = tiny_copy / "tiny-imagenet-200" / "wnids.txt"
    wnids_file.write_text("\n".join(wnids_file.read_text().split()[:199]) + "\n")
    with pytest.raises(DatasetNotFoundError, match="199") as err:
        DATASETS.get("tinyimagenet").loader(tiny_copy, "val")
    _assert_layout_message(err, "tinyimagenet")


def test_tinyimagenet_writer_with_199_wnids(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path, wnids=default_tinyimagenet_wnids()[:199])
    with pytest.raises(DatasetNotFoundError, match="199"):
        DATASETS.get("tinyimagenet").loader(tmp_path, "val")


def test_tinyimagenet_annotation_with_unknown_wnid(tiny_copy: Path) -> None:
    ann = tiny_copy / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    lines[3] = "val_3.JPEG\tn99999999\t0\t0\t63\t63"
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(ZSBenchError, match="val_annotations.txt:4"):
        DATASETS.get("tinyimagenet").loader(tiny_copy, "val")


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_tinyimagenet_corrupt_jpeg(tiny_copy: Path, corruption: str) -> None:
    ds = DATASETS.get("tinyimagenet").loader(tiny_copy, "val")
    path = ds.samples[5][0]
    good = path.read_bytes()
    path.write_bytes(b"this is not a jpeg" if corruption == "garbage" else good[: len(good) // 2])
    ds[4]  # other items still decode
    with pytest.raises(ZSBenchError) as err:
        ds[5]
    assert str(path) in str(err.value)


def test_tinyimagenet_fixture_is_deterministic(tiny_root: Path, tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path, n_val_per_class=1, seed=TINY_SEED)
    a, b = tiny_root / "tiny-imagenet-200", tmp_path / "tiny-imagenet-200"
    for rel in ["wnids.txt", "val/val_annotations.txt", "val/images/val_0.JPEG", "val/images/val_199.JPEG"]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


# ------------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_dataset(tmp_path: Path) -> None:
    spec = DATASETS.get("synthetic")
    assert not spec.needs_root and spec.num_classes == 10
    a, b = spec.loader(tmp_path, "test"), spec.loader(tmp_path / "elsewhere", "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert len(a.classnames) == 10
    train = spec.loader(tmp_path, "train")
    for ds in (a, train):
        counts = torch.bincount(ds.labels, minlength=10)
        assert len(counts) == 10 and counts.min() > 0 and counts.max() - counts.min() <= 1
    img, label = a[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and 0 <= label < 10
    assert not torch.equal(a.images[:8], train.images[:8])


# --------------------------------------------------------------------------------------------------------- subsets


@pytest.mark.parametrize("n", [None, 100, 250])
def test_subset_full_split(n: int | None) -> None:
    s = select_subset(100, n, seed=0)
    assert s.is_full and s.n == 100 and s.seed is None
    assert np.array_equal(s.indices, np.arange(100))
    assert s.sha256 == indices_sha256(np.arange(100))


def test_subset_seeded() -> None:
    s = select_subset(1000, 50, seed=7)
    assert s.n == 50 and not s.is_full and s.n_total == 1000 and s.seed == 7
    assert np.array_equal(s.indices, np.sort(s.indices)) and len(np.unique(s.indices)) == 50
    assert s.indices.min() >= 0 and s.indices.max() < 1000
    assert np.array_equal(s.indices, select_subset(1000, 50, seed=7).indices)
    other = select_subset(1000, 50, seed=8)
    assert not np.array_equal(s.indices, other.indices) and other.sha256 != s.sha256
    assert s.sha256 == indices_sha256(s.indices)
    assert s.to_dict() == {"n": 50, "n_total": 1000, "seed": 7, "indices_sha256": s.sha256, "selection": "random"}


# --------------------------------------------------------------------------------------------------------- prompts


def test_cifar100_prompt_classnames() -> None:
    spec = DATASETS.get("cifar100")
    names = spec.prompt_classnames(list(spec.classnames))
    assert names[list(spec.classnames).index("aquarium_fish")] == "aquarium fish"
    assert spec.prompt_classnames(["aquarium_fish", "Maple-Tree", "a/b"]) == ["aquarium fish", "maple tree", "a b"]


@pytest.mark.parametrize("spec_id", ["cifar10", "cifar100", "tinyimagenet"])
def test_paper_template(spec_id: str) -> None:
    assert GENERIC_TEMPLATE == "This is a photo of a {}"
    assert DATASETS.get(spec_id).templates == ("This is a photo of a {}",)
