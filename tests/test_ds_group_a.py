"""STL-10, PCAM, EuroSAT, DTD and Food-101 loaders against fixtures in their real on-disk layouts."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_fixtures import WRITERS
from dataset_fixtures.common import assert_missing_message, varied_sizes
from dataset_fixtures.dtd import DTD_CLASSES, dtd_lines, dtd_numbers, write_dtd
from dataset_fixtures.eurosat import EUROSAT_CLASSES, eurosat_files, write_eurosat
from dataset_fixtures.food101 import CLASSLIST, food101_classes, food101_split, write_food101
from dataset_fixtures.pcam import pcam_arrays, pcam_paths, write_pcam
from dataset_fixtures.stl10 import STL10_CLASSES, stl10_arrays, write_stl10

import robustbench_zs.datasets  # noqa: F401  (registers the datasets)
from robustbench_zs.datasets import DATASETS
from robustbench_zs.datasets.prompts import prompt_set
from robustbench_zs.errors import DatasetNotFoundError, ZSBenchError

SEED = 2
IDS = ("stl10", "pcam", "eurosat", "dtd", "food101")
N_STL = {"test": 20, "train": 12}
N_PCAM = {"test": 8, "val": 4}

#: dataset -> (paper prompts of the first classes, first ensemble class name)
EXPECTED_PROMPTS = {
    "stl10": (["This is a photo of a airplane"], "airplane"),
    "pcam": (
        ["Tthis is a photo of healthy lymph node tissue.", "This is a photo of lymph node tumor tissue."],
        "lymph node",
    ),
    "eurosat": (["A centered satellite photo of annual crop land."], "annual crop land"),
    "dtd": (["A surface with a banded texture."], "banded"),
    "food101": (["A photo of apple pie, a type of food."], "apple pie"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("group_a")
    write_stl10(root, seed=SEED, n_test=N_STL["test"], n_train=N_STL["train"])
    write_pcam(root, seed=SEED, n_test=N_PCAM["test"], n_val=N_PCAM["val"])
    write_eurosat(root, seed=SEED)
    write_dtd(root, seed=SEED)
    write_food101(root, seed=SEED)
    return root


def _load(root: Path, ds_id: str, split: str | None = None):
    spec = DATASETS.get(ds_id)
    return spec.loader(root, split or spec.eval_split)


def _one_line_with_layout(err: pytest.ExceptionInfo, ds_id: str) -> str:
    spec, msg = DATASETS.get(ds_id), str(err.value)
    assert_missing_message(msg, spec)
    return msg


def _rel(ds, i: int) -> str:
    return ds.samples[i][0].relative_to(ds.root).as_posix()


# ------------------------------------------------------------------------------------------------ all five


@pytest.mark.parametrize("ds_id", IDS)
def test_contract_and_prompts(root: Path, ds_id: str) -> None:
    spec, ds = DATASETS.get(ds_id), _load(root, ds_id)
    assert ds.root == root / spec.folder
    assert len(ds.classnames) == spec.num_classes
    labels = np.asarray(ds.labels)
    assert labels.dtype == np.int64 and len(labels) == len(ds)
    assert sorted(set(labels.tolist())) == list(range(spec.num_classes))  # every class has an image
    for i in (0, len(ds) - 1):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3 and label == labels[i]
        if spec.native_size is not None:
            assert tuple(img.shape[1:]) == spec.native_size
    assert len(ds.fingerprint()) == 64 and ds.fingerprint() == _load(root, ds_id).fingerprint()

    paper, first_ensemble = EXPECTED_PROMPTS[ds_id]
    head = spec.paper_names(ds.classnames)
    assert len(head) == spec.num_classes
    assert [spec.templates[0].format(n) for n in head[: len(paper)]] == paper
    names, templates, _ = prompt_set(spec, ds, "ensemble")
    assert len(names) == spec.num_classes and names[0] == first_ensemble
    assert spec.ensemble_names(ds)[0] == first_ensemble


@pytest.mark.parametrize("ds_id", IDS)
def test_unknown_split(root: Path, ds_id: str) -> None:
    with pytest.raises(ZSBenchError, match="no split 'nope'"):
        DATASETS.get(ds_id).loader(root, "nope")


@pytest.mark.parametrize("ds_id", IDS)
def test_absent_folder(tmp_path: Path, ds_id: str) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        _load(tmp_path, ds_id)
    _one_line_with_layout(err, ds_id)


def test_spec_fields() -> None:
    expect = {
        "stl10": ("stl10_binary", ("test", "train"), "test", 10, (96, 96), "native", "STL10"),
        "pcam": ("pcam", ("test", "train", "val"), "test", 2, (96, 96), "resize256_crop224", None),
        "eurosat": ("eurosat", ("all",), "all", 10, (64, 64), "resize256_crop224", "EuroSAT"),
        "dtd": ("dtd", ("test", "train", "val"), "test", 47, None, "resize256_crop224", "DTD"),
        "food101": ("food-101", ("test", "train"), "test", 101, None, "resize256_crop224", "Food101"),
    }
    for ds_id, (folder, splits, eval_split, n, size, pre, tv) in expect.items():
        spec = DATASETS.get(ds_id)
        assert (spec.folder, spec.splits, spec.eval_split, spec.num_classes) == (folder, splits, eval_split, n)
        assert (spec.native_size, spec.paper_preprocess) == (size, pre)
        assert spec.ensemble_templates == ds_id
        if tv is None:
            assert spec.download is None
        else:
            assert spec.download.torchvision_class == tv
    assert DATASETS.get("stl10").download.calls == ({"split": "test"}, {"split": "train"})
    assert DATASETS.get("dtd").download.calls == ({"split": "test", "partition": 1},)
    steps = DATASETS.get("pcam").manual_steps
    assert "zenodo.org/records/2546921" in steps and "<data-root>/pcam" in steps and "gunzip" in steps
    assert "camelyonpatch_level_2_split_test_x.h5" in steps and "camelyonpatch_level_2_split_test_y.h5" in steps


# --------------------------------------------------------------------------------------------------- STL-10


@pytest.mark.parametrize("split", ["test", "train"])
def test_stl10_round_trip(root: Path, split: str) -> None:
    ds = _load(root, "stl10", split)
    images, labels = stl10_arrays(N_STL[split], SEED if split == "test" else SEED + 1)
    assert ds.classnames == list(STL10_CLASSES)
    assert ds.labels.tolist() == labels.tolist()
    for i in range(len(ds)):
        img, y = ds[i]
        assert y == labels[i] and torch.equal(img, torch.from_numpy(images[i]))
    assert torch.equal(ds[0][0][0], ds[0][0][1])  # the gray image


def test_stl10_reads_channels_column_major(root: Path) -> None:
    """Byte ``c * 9216 + x * 96 + y`` of an image record is pixel (row y, column x) of channel c."""
    raw = np.fromfile(root / "stl10_binary" / "test_X.bin", dtype=np.uint8)
    labels = np.fromfile(root / "stl10_binary" / "test_y.bin", dtype=np.uint8)
    ds = _load(root, "stl10")
    i = 3
    img = ds[i][0]
    for c, y, x in [(0, 0, 1), (1, 5, 70), (2, 95, 0), (0, 17, 42)]:
        assert img[c, y, x] == raw[i * 27648 + c * 9216 + x * 96 + y]
    assert ds[i][1] == labels[i] - 1


def test_stl10_pickles_without_the_memory_map(root: Path) -> None:
    ds = _load(root, "stl10")
    first = ds[1][0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._x is None and torch.equal(clone[1][0], first)
    assert len(pickle.dumps(ds)) < 10_000


def _stl10_copy(tmp_path: Path) -> Path:
    return write_stl10(tmp_path, seed=SEED, n_test=10, n_train=10)


def test_stl10_missing_labels_file(tmp_path: Path) -> None:
    (_stl10_copy(tmp_path) / "test_y.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match="test_y.bin") as err:
        _load(tmp_path, "stl10")
    _one_line_with_layout(err, "stl10")


def test_stl10_truncated_images_file(tmp_path: Path) -> None:
    path = _stl10_copy(tmp_path) / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ZSBenchError, match=f"corrupt STL-10 file {path}.*multiple of 27648"):
        _load(tmp_path, "stl10")


def test_stl10_label_count_and_range(tmp_path: Path) -> None:
    folder = _stl10_copy(tmp_path)
    y = folder / "test_y.bin"
    y.write_bytes(bytes([1] * 9))
    with pytest.raises(ZSBenchError, match=f"{y}: 9 labels for the 10 images"):
        _load(tmp_path, "stl10")
    y.write_bytes(bytes([0] + [1] * 9))
    with pytest.raises(ZSBenchError, match=f"{y}: labels outside 1..10"):
        _load(tmp_path, "stl10")


def test_stl10_bad_class_names(tmp_path: Path) -> None:
    path = _stl10_copy(tmp_path) / "class_names.txt"
    path.write_text("airplane\nbird\n")
    with pytest.raises(ZSBenchError, match=f"{path}: 2 class names, expected 10"):
        _load(tmp_path, "stl10")


# ----------------------------------------------------------------------------------------------------- PCAM


@pytest.mark.parametrize("split", ["test", "val"])
def test_pcam_round_trip(root: Path, split: str) -> None:
    ds = _load(root, "pcam", split)
    images, labels = pcam_arrays(N_PCAM[split], SEED if split == "test" else SEED + 1)
    assert ds.classnames == ["healthy lymph node tissue", "lymph node tumor tissue"]
    assert ds.labels.tolist() == labels.tolist()
    for i in range(len(ds)):
        img, y = ds[i]
        assert y == labels[i] and torch.equal(img, torch.from_numpy(images[i]).permute(2, 0, 1))
    assert ds[-1][1] == labels[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_pcam_in_dataloader_workers(root: Path) -> None:
    ds = _load(root, "pcam")
    ds[0]  # the parent opens its handle first; forked workers must open their own
    assert pickle.loads(pickle.dumps(ds))._file is None
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    xs, ys = zip(*loader, strict=True)
    images, labels = pcam_arrays(N_PCAM["test"], SEED)
    assert torch.cat(ys).tolist() == labels.tolist()
    assert torch.equal(torch.cat(xs), torch.from_numpy(images).permute(0, 3, 1, 2))


def test_pcam_fingerprint_follows_the_files(tmp_path: Path, root: Path) -> None:
    write_pcam(tmp_path, seed=SEED + 5, n_test=N_PCAM["test"])
    assert _load(tmp_path, "pcam").fingerprint() != _load(root, "pcam").fingerprint()


def test_pcam_missing_labels_file(tmp_path: Path) -> None:
    folder = write_pcam(tmp_path, seed=SEED)
    _, y_path = pcam_paths(folder, "test")
    y_path.unlink()
    with pytest.raises(DatasetNotFoundError, match="missing camelyonpatch_level_2_split_test_y.h5") as err:
        _load(tmp_path, "pcam")
    _one_line_with_layout(err, "pcam")
    y_path.with_name(y_path.name + ".gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DatasetNotFoundError, match=r"found camelyonpatch_level_2_split_test_y.h5.gz: gunzip it"):
        _load(tmp_path, "pcam")


def test_pcam_truncated_file(tmp_path: Path) -> None:
    x_path, _ = pcam_paths(write_pcam(tmp_path, seed=SEED), "test")
    x_path.write_bytes(x_path.read_bytes()[:5000])
    with pytest.raises(ZSBenchError, match=f"corrupt PCAM file {x_path}: ") as err:
        _load(tmp_path, "pcam")
    assert "\n" not in str(err.value)
    x_path.write_bytes(b"not an hdf5 file")
    with pytest.raises(ZSBenchError, match=f"corrupt PCAM file {x_path}: "):
        _load(tmp_path, "pcam")


def test_pcam_wrong_datasets(tmp_path: Path) -> None:
    import h5py

    x_path, y_path = pcam_paths(write_pcam(tmp_path, seed=SEED), "test")
    with h5py.File(y_path, "w") as f:
        f.create_dataset("y", data=np.zeros((3, 1, 1, 1), dtype=np.uint8))
    with pytest.raises(ZSBenchError, match=f"corrupt PCAM file {y_path}: dataset 'y' has shape"):
        _load(tmp_path, "pcam")
    with h5py.File(x_path, "w") as f:
        f.create_dataset("images", data=np.zeros((3, 96, 96, 3), dtype=np.uint8))
    with pytest.raises(ZSBenchError, match=f"corrupt PCAM file {x_path}: no dataset 'x'"):
        _load(tmp_path, "pcam")


# -------------------------------------------------------------------------------------------------- EuroSAT


def test_eurosat_round_trip(root: Path) -> None:
    ds = _load(root, "eurosat")
    rows = eurosat_files(SEED)
    expected = sorted(rows, key=lambda r: (r[1], r[0].split("/")[1]))
    assert ds.classnames == list(EUROSAT_CLASSES) == sorted(EUROSAT_CLASSES)
    assert [_rel(ds, i) for i in range(len(ds))] == [f"2750/{rel}" for rel, _ in expected]
    assert ds.labels.tolist() == [y for _, y in expected]
    gray = [_rel(ds, i) for i in range(len(ds))].index(f"2750/{rows[0][0]}")  # the first image written
    img = ds[gray][0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert [ds.item_pil(i)[0].size for i in (0, len(ds) - 1)] == [(64, 64), (64, 64)]


def test_eurosat_missing_folder(tmp_path: Path) -> None:
    shutil.rmtree(write_eurosat(tmp_path, seed=SEED, n_per_class=1) / "2750")
    with pytest.raises(DatasetNotFoundError, match="missing 2750") as err:
        _load(tmp_path, "eurosat")
    _one_line_with_layout(err, "eurosat")


def test_eurosat_class_folders(tmp_path: Path) -> None:
    data = write_eurosat(tmp_path, seed=SEED, n_per_class=1) / "2750"
    (data / "Glacier").mkdir()
    with pytest.raises(DatasetNotFoundError, match="found 11 classes, expected 10"):
        _load(tmp_path, "eurosat")
    (data / "Glacier").rmdir()
    (data / "SeaLake").rename(data / "Lake")
    with pytest.raises(DatasetNotFoundError, match="unexpected class folders in 2750: Lake"):
        _load(tmp_path, "eurosat")
    (data / "Lake").rename(data / "SeaLake")
    for p in (data / "Forest").iterdir():
        p.unlink()
    with pytest.raises(DatasetNotFoundError, match="no images in 2750/Forest"):
        _load(tmp_path, "eurosat")


def test_eurosat_corrupt_image(tmp_path: Path) -> None:
    write_eurosat(tmp_path, seed=SEED, n_per_class=1)
    ds = _load(tmp_path, "eurosat")
    path = ds.samples[4][0]
    path.write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(ZSBenchError, match=f"cannot decode image {path}: "):
        ds[4]
    with pytest.raises(ZSBenchError, match=f"cannot decode image {path}: "):
        ds.item_pil(4)
    ds[3]  # the others still load


# ------------------------------------------------------------------------------------------------------ DTD


@pytest.mark.parametrize("split", ["test", "train", "val"])
def test_dtd_round_trip(root: Path, split: str) -> None:
    ds = _load(root, "dtd", split)
    lines = dtd_lines(split, 1, SEED)
    assert lines != dtd_lines(split, 2, SEED)  # the fixture's partitions differ: the loader must read partition 1
    assert ds.classnames == list(DTD_CLASSES)
    assert [_rel(ds, i) for i in range(len(ds))] == [f"dtd/images/{line}" for line in lines]
    assert ds.labels.tolist() == [DTD_CLASSES.index(line.split("/")[0]) for line in lines]
    # image sizes as written (the writer's order: class by class, sorted numbers)
    written = [f"{c}/{c}_{k:04d}.jpg" for c, ks in zip(DTD_CLASSES, dtd_numbers(SEED), strict=True) for k in ks]
    size_of = dict(zip(written, varied_sizes(len(written), SEED, low=16, high=40), strict=True))
    for i in (0, 20, len(ds) - 1):
        assert tuple(ds[i][0].shape) == (3, *size_of[lines[i]])


def test_dtd_missing_list(tmp_path: Path) -> None:
    (write_dtd(tmp_path, seed=SEED, partitions=(1,)) / "dtd" / "labels" / "test1.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing dtd/labels/test1.txt") as err:
        _load(tmp_path, "dtd")
    _one_line_with_layout(err, "dtd")


@pytest.mark.parametrize("bad", ["checkered/checkered_0001.jpg", "banded_0001.jpg", "banded/"])
def test_dtd_malformed_line(tmp_path: Path, bad: str) -> None:
    path = write_dtd(tmp_path, seed=SEED, partitions=(1,)) / "dtd" / "labels" / "test1.txt"
    lines = path.read_text().splitlines()
    lines[4] = bad
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ZSBenchError, match=f"corrupt metadata file {path}:5: bad line '{bad}'") as err:
        _load(tmp_path, "dtd")
    assert "\n" not in str(err.value)


def test_dtd_missing_and_corrupt_images(tmp_path: Path) -> None:
    base = write_dtd(tmp_path, seed=SEED, partitions=(1,))
    ds = _load(tmp_path, "dtd")
    path = ds.samples[7][0]
    path.write_bytes(b"GIF89a nonsense")
    with pytest.raises(ZSBenchError, match=f"cannot decode image {path}: "):
        ds[7]
    path.unlink()
    with pytest.raises(DatasetNotFoundError, match=f"1 images listed in dtd/labels/test1.txt are missing, e.g. {path}"):
        _load(tmp_path, "dtd")
    shutil.rmtree(base / "dtd" / "images" / "zigzagged")
    with pytest.raises(DatasetNotFoundError, match="found 46 classes, expected 47"):
        _load(tmp_path, "dtd")


# ------------------------------------------------------------------------------------------------- Food-101


def test_food101_class_list() -> None:
    data = json.loads(CLASSLIST.read_text())
    assert data["source"] and data["file"] == "food-101/meta/classes.txt"
    lines = data["lines"]
    assert len(lines) == len(set(lines)) == 101 and lines == sorted(lines)
    assert lines[:3] == ["apple_pie", "baby_back_ribs", "baklava"] and lines[-1] == "waffles"
    assert lines.index("cheese_plate") + 1 == lines.index("cheesecake")


@pytest.mark.parametrize("split", ["test", "train"])
def test_food101_round_trip(root: Path, split: str) -> None:
    ds = _load(root, "food101", split)
    content = food101_split(split, SEED)
    rels = [rel for rel_list in content.values() for rel in rel_list]
    classes = sorted(content)
    assert ds.classnames == classes == list(food101_classes())
    assert [_rel(ds, i) for i in range(len(ds))] == [f"images/{rel}.jpg" for rel in rels]
    assert ds.labels.tolist() == [classes.index(rel.split("/")[0]) for rel in rels]
    sizes = varied_sizes(len(rels), SEED * 10 + ("test", "train").index(split), low=16, high=40)
    for i in (0, 50, len(ds) - 1):
        assert tuple(ds[i][0].shape) == (3, *sizes[i])
    img = ds[0][0]
    assert torch.equal(img[0], img[2])  # the first image of each split is grayscale
    assert (root / "food-101" / "meta" / "classes.txt").read_text().split() == classes


def test_food101_missing_split_json(tmp_path: Path) -> None:
    (write_food101(tmp_path, seed=SEED) / "meta" / "test.json").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing meta/test.json") as err:
        _load(tmp_path, "food101")
    _one_line_with_layout(err, "food101")
    _load(tmp_path, "food101", "train")  # the other split is independent


def test_food101_malformed_json(tmp_path: Path) -> None:
    path = write_food101(tmp_path, seed=SEED) / "meta" / "test.json"
    text = path.read_text()
    path.write_text(text[:200] + "\n" + text[210:])
    with pytest.raises(ZSBenchError, match=f"corrupt metadata file {path}: line 2 column"):
        _load(tmp_path, "food101")
    path.write_text(json.dumps({"apple_pie": "apple_pie/1234"}))
    with pytest.raises(ZSBenchError, match=f"corrupt metadata file {path}: class 'apple_pie'"):
        _load(tmp_path, "food101")
    path.write_text("[]")
    with pytest.raises(ZSBenchError, match=f"corrupt metadata file {path}: expected an object"):
        _load(tmp_path, "food101")
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ZSBenchError, match=f"corrupt metadata file {path}: not UTF-8"):
        _load(tmp_path, "food101")


def test_food101_class_count_and_images(tmp_path: Path) -> None:
    path = write_food101(tmp_path, seed=SEED) / "meta" / "test.json"
    content = food101_split("test", SEED)
    ds = _load(tmp_path, "food101")
    img_path = ds.samples[10][0]
    img_path.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(ZSBenchError, match=f"cannot decode image {img_path}: "):
        ds[10]
    img_path.unlink()
    with pytest.raises(DatasetNotFoundError, match=f"images listed in meta/test.json are missing, e.g. {img_path}"):
        _load(tmp_path, "food101")
    del content["waffles"]
    path.write_text(json.dumps(content))
    with pytest.raises(DatasetNotFoundError, match="meta/test.json: found 100 classes, expected 101"):
        _load(tmp_path, "food101")


def test_writers_are_registered_and_deterministic(tmp_path: Path) -> None:
    for ds_id in IDS:
        a, b = WRITERS[ds_id](tmp_path / "a", seed=4), WRITERS[ds_id](tmp_path / "b", seed=4)
        files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert files_a == files_b and files_a
        for rel in files_a[:: max(1, len(files_a) // 7)]:
            if rel.suffix != ".h5":  # HDF5 files carry creation times
                assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# ------------------------------------------------------------------------- cross-check against torchvision's readers


@pytest.mark.parametrize(
    ("ds_id", "make"),
    [
        ("stl10", lambda tvd, root: tvd.STL10(root, split="test")),
        ("pcam", lambda tvd, root: tvd.PCAM(root, split="test")),
        ("eurosat", lambda tvd, root: tvd.EuroSAT(root)),
        ("dtd", lambda tvd, root: tvd.DTD(root, split="test", partition=1)),
        ("food101", lambda tvd, root: tvd.Food101(root, split="test")),
    ],
)
def test_same_images_and_labels_as_torchvision(tmp_path, monkeypatch, ds_id, make) -> None:
    """torchvision's own dataset classes (integrity checks off: fixtures have other md5s) read the same data."""
    import torchvision.datasets as tvd
    from dataset_fixtures import WRITERS

    for cls in (tvd.STL10, tvd.PCAM, tvd.EuroSAT, tvd.DTD, tvd.Food101):
        for attr in ("_check_integrity", "_check_exists"):
            if hasattr(cls, attr):
                monkeypatch.setattr(cls, attr, lambda self: True)
    WRITERS[ds_id](tmp_path, seed=4)
    ours = DATASETS.get(ds_id).loader(tmp_path, DATASETS.get(ds_id).eval_split)
    theirs = make(tvd, str(tmp_path))
    assert len(theirs) == len(ours)
    if ds_id == "eurosat":  # torchvision walks folders in its own order; compare as sets of (file, label)
        assert sorted((Path(p).name, y) for p, y in theirs.samples) == sorted((p.name, y) for p, y in ours.samples)
        return
    for i in range(len(ours)):
        im, label = theirs[i]
        img, our_label = ours[i]
        assert our_label == int(label)
        ref = torch.from_numpy(np.array(im.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
        assert torch.equal(img, ref), (ds_id, i)
