"""ImageNet, Caltech-101 and Caltech-256 loaders against fixtures in their real on-disk layouts."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_fixtures import WRITERS
from dataset_fixtures.caltech import write_caltech101, write_caltech256
from dataset_fixtures.common import assert_missing_message
from dataset_fixtures.imagenet import (
    imagenet_ilsvrc_ids,
    imagenet_val_wnids,
    imagenet_wnids,
    write_imagenet,
)
from scipy.io import savemat

import robustbench_zs.datasets  # noqa: F401  (registers the datasets)
from robustbench_zs.datasets import DATASETS
from robustbench_zs.datasets.spec import load_metadata
from robustbench_zs.errors import DatasetNotFoundError, ZSBenchError

SEED = 3
CLASSLISTS = Path(robustbench_zs.datasets.__file__).parent / "metadata" / "classlists"
WNID_TABLE = load_metadata("imagenet_wnid_to_name")["names"]
DEVKIT = "ILSVRC2012_devkit_t12"
GT = f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt"
META = f"{DEVKIT}/data/meta.mat"
INET_VARIANTS = {"flat-tar": ("flat", "tar"), "flat-dir": ("flat", "dir"), "folders": ("folders", "tar")}


def _assert_layout_message(err: pytest.ExceptionInfo, spec_id: str) -> None:
    spec = DATASETS.get(spec_id)
    assert_missing_message(str(err.value), spec)


def _names_labels(ds) -> dict[str, int]:
    return {p.name: y for p, y in ds.samples}


# ------------------------------------------------------------------------------------------------------ ImageNet


@pytest.fixture(scope="module")
def inet_roots(tmp_path_factory) -> dict[str, Path]:
    roots = {}
    for key, (layout, devkit) in INET_VARIANTS.items():
        roots[key] = tmp_path_factory.mktemp(key)
        write_imagenet(roots[key], seed=SEED, layout=layout, devkit=devkit, n_train_per_class=int(key == "flat-tar"))
    return roots


@pytest.fixture(scope="module")
def inet_val(inet_roots) -> dict:
    return {key: DATASETS.get("imagenet").loader(root, "val") for key, root in inet_roots.items()}


def _clone_flat(src: Path, dst_root: Path) -> Path:
    """A cheap copy of a flat ImageNet fixture: the val images as symlinks, the devkit copied."""
    base = dst_root / "imagenet"
    (base / "val").mkdir(parents=True)
    for p in (src / "imagenet" / "val").iterdir():
        (base / "val" / p.name).symlink_to(p)
    for p in (src / "imagenet").iterdir():
        if p.name == "val" or p.name == "train":
            continue
        (shutil.copytree if p.is_dir() else shutil.copy)(p, base / p.name)
    return base


def test_imagenet_fixture_is_the_real_layout(inet_roots) -> None:
    flat = inet_roots["flat-tar"] / "imagenet"
    assert (flat / "val" / "ILSVRC2012_val_00000001.JPEG").is_file()
    assert (flat / "val" / "ILSVRC2012_val_00001000.JPEG").is_file()
    with tarfile.open(flat / f"{DEVKIT}.tar.gz") as tf:
        assert {GT, META} <= set(tf.getnames())
    assert (inet_roots["flat-dir"] / "imagenet" / GT).is_file()
    folders = inet_roots["folders"] / "imagenet" / "val"
    assert len([p for p in folders.iterdir() if p.is_dir()]) == 1000
    # ILSVRC2012_IDs are not in sorted-wnid order, so a loader using ID - 1 as the label would fail the tests below.
    assert imagenet_ilsvrc_ids(SEED) != imagenet_wnids()


def test_imagenet_devkit_reads_like_torchvision(inet_roots, tmp_path, monkeypatch) -> None:
    """torchvision's own devkit parser reads the fixture tarball to the same validation wnids."""
    import torchvision.datasets.imagenet as tv_imagenet

    shutil.copy(inet_roots["flat-tar"] / "imagenet" / f"{DEVKIT}.tar.gz", tmp_path)
    monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda *a, **k: None)  # the md5 is the real archive's
    tv_imagenet.parse_devkit_archive(str(tmp_path))
    wnid_to_classes, val_wnids = tv_imagenet.load_meta_file(str(tmp_path))
    assert val_wnids == imagenet_val_wnids(1, SEED)
    assert sorted(wnid_to_classes) == imagenet_wnids()


@pytest.mark.parametrize("key", sorted(INET_VARIANTS))
def test_imagenet_val_loads(inet_val, key: str) -> None:
    spec, ds = DATASETS.get("imagenet"), inet_val[key]
    sorted_wnids = sorted(WNID_TABLE)
    written = imagenet_val_wnids(1, SEED)  # class of ILSVRC2012_val_<k>.JPEG is written[k - 1]
    assert len(ds) == len(written) == 1000
    assert [p.name for p, _ in ds.samples] == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 1001)]
    assert ds.labels.tolist() == [sorted_wnids.index(w) for w in written]
    assert ds.labels.dtype == np.int64
    assert ds.wnids == sorted_wnids
    assert ds.classnames == [WNID_TABLE[w] for w in sorted_wnids]
    assert len(ds.classnames) == spec.num_classes and ds.classnames.count("crane") == 2
    img, label = ds[0]
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3 and label == ds.labels[0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # image 1 is grayscale
    pil, _ = ds.item_pil(1)
    assert pil.mode == "RGB" and (pil.height, pil.width) == tuple(ds[1][0].shape[1:])
    assert len(ds.fingerprint()) == 64


def test_imagenet_layouts_agree(inet_val) -> None:
    maps = {key: _names_labels(ds) for key, ds in inet_val.items()}
    assert maps["flat-tar"] == maps["flat-dir"] == maps["folders"]
    assert [y for _, y in inet_val["folders"].samples] == [y for _, y in inet_val["flat-tar"].samples]


def test_imagenet_prompts(inet_val) -> None:
    spec, ds = DATASETS.get("imagenet"), inet_val["flat-tar"]
    assert spec.templates[0].format(spec.paper_names(ds.classnames)[0]) == "This is a photo of a tench"
    ensemble = spec.ensemble_names(ds)
    assert len(ensemble) == spec.num_classes and ensemble[0] == "tench"
    assert spec.ensemble_templates == "imagenet1k" and spec.download is None and "<data-root>" in spec.manual_steps


def test_imagenet_train_split(inet_roots) -> None:
    ds = DATASETS.get("imagenet").loader(inet_roots["flat-tar"], "train")
    wnids = sorted(WNID_TABLE)
    assert len(ds) == 1000
    assert [(p.parent.name, y) for p, y in ds.samples] == [(w, i) for i, w in enumerate(wnids)]
    assert ds[5][0].dtype == torch.uint8


def test_imagenet_flat_without_devkit(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-tar"], tmp_path)
    (base / f"{DEVKIT}.tar.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"no devkit: put ILSVRC2012_devkit_t12\.tar\.gz in") as err:
        DATASETS.get("imagenet").loader(tmp_path, "val")
    _assert_layout_message(err, "imagenet")


def test_imagenet_extracted_devkit_without_ground_truth(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-dir"], tmp_path)
    (base / GT).unlink()
    with pytest.raises(DatasetNotFoundError, match="ILSVRC2012_validation_ground_truth.txt") as err:
        DATASETS.get("imagenet").loader(tmp_path, "val")
    _assert_layout_message(err, "imagenet")


def test_imagenet_incomplete_devkit_falls_back_to_tarball(inet_roots, inet_val, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-tar"], tmp_path)
    (base / DEVKIT / "data").mkdir(parents=True)  # a half-extracted devkit next to the tarball
    ds = DATASETS.get("imagenet").loader(tmp_path, "val")
    assert ds.labels.tolist() == inet_val["flat-tar"].labels.tolist()


@pytest.mark.parametrize("bad", ["seven", "0", "1001", "3 4"])
def test_imagenet_malformed_ground_truth_line(inet_roots, tmp_path, bad: str) -> None:
    base = _clone_flat(inet_roots["flat-dir"], tmp_path)
    lines = (base / GT).read_text().splitlines()
    lines[4] = bad
    (base / GT).write_text("\n".join(lines) + "\n")
    with pytest.raises(ZSBenchError, match=r"ILSVRC2012_validation_ground_truth\.txt:5: expected an ILSVRC2012_ID"):
        DATASETS.get("imagenet").loader(tmp_path, "val")


def _rewrite_tar(tar_path: Path, member: str, blob: bytes | None) -> None:
    """Replace (or, with None, drop) one member of the devkit tarball."""
    with tarfile.open(tar_path) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]
    with tarfile.open(tar_path, "w:gz") as tf:
        for m, data in members:
            if m.name == member:
                if blob is None:
                    continue
                data = blob
                m.size = len(blob)
            tf.addfile(m, io.BytesIO(data) if data is not None else None)


def test_imagenet_malformed_ground_truth_in_tarball(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-tar"], tmp_path)
    _rewrite_tar(base / f"{DEVKIT}.tar.gz", GT, b"12\nn01440764\n")
    with pytest.raises(ZSBenchError, match=rf"{DEVKIT}\.tar\.gz:{GT}:2: expected an ILSVRC2012_ID"):
        DATASETS.get("imagenet").loader(tmp_path, "val")


def test_imagenet_tarball_without_meta(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-tar"], tmp_path)
    _rewrite_tar(base / f"{DEVKIT}.tar.gz", META, None)
    with pytest.raises(ZSBenchError, match=r"ILSVRC2012_devkit_t12\.tar\.gz: no member .*meta\.mat"):
        DATASETS.get("imagenet").loader(tmp_path, "val")


def test_imagenet_corrupt_tarball(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-tar"], tmp_path)
    tar = base / f"{DEVKIT}.tar.gz"
    tar.write_bytes(tar.read_bytes()[:300])
    with pytest.raises(ZSBenchError, match=r"corrupt devkit archive .*ILSVRC2012_devkit_t12\.tar\.gz") as err:
        DATASETS.get("imagenet").loader(tmp_path, "val")
    assert "\n" not in str(err.value)


def test_imagenet_corrupt_meta_mat(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-dir"], tmp_path)
    (base / META).write_bytes(b"not a MATLAB file")
    with pytest.raises(ZSBenchError, match=r"corrupt MATLAB file .*meta\.mat"):
        DATASETS.get("imagenet").loader(tmp_path, "val")


def test_imagenet_meta_mat_without_the_1000_leaves(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-dir"], tmp_path)
    fields = [("ILSVRC2012_ID", object), ("WNID", object), ("num_children", object)]
    synsets = np.empty((2, 1), dtype=fields)
    synsets[0, 0] = (1.0, "n01440764", 0.0)
    synsets[1, 0] = (1001.0, "n00001740", 1.0)
    savemat(base / META, {"synsets": synsets})
    with pytest.raises(ZSBenchError, match=r"meta\.mat: expected leaf synsets with ILSVRC2012_ID 1\.\.1000, found 1"):
        DATASETS.get("imagenet").loader(tmp_path, "val")
    savemat(base / META, {"other": np.zeros(3)})
    with pytest.raises(ZSBenchError, match=r"meta\.mat: no 'synsets' variable"):
        DATASETS.get("imagenet").loader(tmp_path, "val")


def test_imagenet_missing_listed_image(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-tar"], tmp_path)
    (base / "val" / "ILSVRC2012_val_00000007.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"1 of the 1000 images .* e\.g\. ILSVRC2012_val_00000007\.JPEG"):
        DATASETS.get("imagenet").loader(tmp_path, "val")


def test_imagenet_corrupt_image(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-tar"], tmp_path)
    bad = base / "val" / "ILSVRC2012_val_00000009.JPEG"
    bad.unlink()
    bad.write_bytes(b"\xff\xd8 truncated")
    ds = DATASETS.get("imagenet").loader(tmp_path, "val")  # listing does not decode
    assert ds[7][0].dtype == torch.uint8
    with pytest.raises(ZSBenchError, match=f"cannot decode image {bad}"):
        ds[8]
    with pytest.raises(ZSBenchError, match=f"cannot decode image {bad}"):
        ds.item_pil(8)


def test_imagenet_mixed_val_layout(inet_roots, tmp_path) -> None:
    base = _clone_flat(inet_roots["flat-tar"], tmp_path)
    (base / "val" / "n01440764").mkdir()
    with pytest.raises(DatasetNotFoundError, match="mixes 1 class folders with 1000 flat images") as err:
        DATASETS.get("imagenet").loader(tmp_path, "val")
    _assert_layout_message(err, "imagenet")


def test_imagenet_class_folders_incomplete(inet_roots, tmp_path) -> None:
    shutil.copytree(inet_roots["folders"] / "imagenet" / "val", tmp_path / "imagenet" / "val", symlinks=True)
    val = tmp_path / "imagenet" / "val"
    shutil.rmtree(val / "n01443537")
    with pytest.raises(DatasetNotFoundError, match=r"lacks e\.g\. n01443537: found 999 classes, expected 1000"):
        DATASETS.get("imagenet").loader(tmp_path, "val")
    (val / "not_a_wnid").mkdir()
    with pytest.raises(ZSBenchError, match="not ImageNet-1k wnids: not_a_wnid"):
        DATASETS.get("imagenet").loader(tmp_path, "val")


def test_imagenet_absent(tmp_path) -> None:
    spec = DATASETS.get("imagenet")
    with pytest.raises(DatasetNotFoundError, match="no folder imagenet") as err:
        spec.loader(tmp_path, "val")
    _assert_layout_message(err, "imagenet")
    (tmp_path / "imagenet").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no val/ folder"):
        spec.loader(tmp_path, "val")
    (tmp_path / "imagenet" / "val").mkdir()
    with pytest.raises(DatasetNotFoundError, match="val/ holds no images"):
        spec.loader(tmp_path, "val")
    with pytest.raises(DatasetNotFoundError, match="no train/ folder"):
        spec.loader(tmp_path, "train")
    with pytest.raises(ZSBenchError, match="no split 'test'"):
        spec.loader(tmp_path, "test")


# ------------------------------------------------------------------------------------------------------- Caltech


def _classlist(name: str) -> list[str]:
    return json.loads((CLASSLISTS / f"{name}.json").read_text())["classnames"]


@pytest.fixture(scope="module")
def caltech_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("caltech")
    write_caltech101(root, seed=SEED, n_per_class=2)
    write_caltech256(root, seed=SEED)
    return root


def test_caltech_classlists_are_the_real_folders() -> None:
    c101, c256 = _classlist("caltech101"), _classlist("caltech256")
    assert len(c101) == 101 and c101 == sorted(c101) and c101[:6] == [
        "Faces", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes"
    ]  # fmt: skip
    assert len(c256) == 257 and c256 == sorted(c256) and c256[0] == "001.ak47" and c256[-1] == "257.clutter"
    assert [int(c.split(".")[0]) for c in c256] == list(range(1, 258))
    assert c256[231] == "232.t-shirt" and c256[252] == "253.faces-easy-101"


def test_caltech101_loads(caltech_root) -> None:
    spec = DATASETS.get("caltech101")
    ds = spec.loader(caltech_root, "all")
    cats = _classlist("caltech101")
    assert ds.classnames == cats and len(ds.classnames) == spec.num_classes
    expected = [(f"{c}/image_{i:04d}.jpg", y) for y, c in enumerate(cats) for i in (1, 2)]
    assert [(f"{p.parent.name}/{p.name}", y) for p, y in ds.samples] == expected
    assert (caltech_root / "caltech101" / "101_ObjectCategories" / "BACKGROUND_Google" / "image_0001.jpg").is_file()
    assert all("BACKGROUND_Google" not in str(p) for p, _ in ds.samples)
    img, label = ds[0]
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3 and label == 0
    assert torch.equal(img[0], img[2])  # the first image is grayscale
    assert ds[len(ds) - 1][1] == 100 and ds.labels.tolist() == [y for _, y in expected]


def test_caltech101_prompts(caltech_root) -> None:
    spec = DATASETS.get("caltech101")
    ds = spec.loader(caltech_root, "all")
    assert spec.templates[0].format(spec.paper_names(ds.classnames)[0]) == "A photo of a faces."
    ensemble = spec.ensemble_names(ds)
    curated = load_metadata("clip_benchmark_en")["classnames"]["caltech101"]
    assert curated[0] == "background" and ensemble == curated[1:] and len(ensemble) == spec.num_classes
    assert ensemble[0] == "off-center face" and ensemble[cats_index("car_side")] == "side of a car"
    assert spec.ensemble_templates == "caltech101" and spec.download is None and "<data-root>" in spec.manual_steps


def cats_index(name: str) -> int:
    return _classlist("caltech101").index(name)


def test_caltech256_loads_and_skips_stray_files(caltech_root) -> None:
    spec = DATASETS.get("caltech256")
    ds = spec.loader(caltech_root, "all")
    cats = _classlist("caltech256")
    assert ds.classnames == cats and len(ds.classnames) == spec.num_classes
    expected = [(f"{c}/{c[:3]}_0001.jpg", y) for y, c in enumerate(cats)]
    assert [(f"{p.parent.name}/{p.name}", y) for p, y in ds.samples] == expected
    cat_dir = caltech_root / "caltech256" / "256_ObjectCategories"
    assert (cat_dir / "198.spider" / "RENAME2").is_file() and (cat_dir / "056.dog" / "greg").is_dir()
    assert all(p.suffix == ".jpg" for p, _ in ds.samples)
    img, _ = ds[len(ds) - 1]
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3


def test_caltech256_prompts(caltech_root) -> None:
    spec = DATASETS.get("caltech256")
    ds = spec.loader(caltech_root, "all")
    paper = spec.paper_names(ds.classnames)
    assert spec.templates[0].format(paper[0]) == "A photo of a ak47."
    assert paper[1] == "american flag" and paper[14] == "bonsai 101" and paper[256] == "clutter"
    ensemble = spec.ensemble_names(ds)
    assert len(ensemble) == spec.num_classes and len(set(ensemble)) == spec.num_classes
    assert ensemble[0] == "AK-47" and ensemble[1] == "american flag" and ensemble[14] == "bonsai"
    by_folder = dict(zip(ds.classnames, ensemble, strict=True))
    assert by_folder["253.faces-easy-101"] == "face" and by_folder["252.car-side-101"] == "side of a car"
    assert by_folder["232.t-shirt"] == "t-shirt" and by_folder["251.airplanes-101"] == "airplane"
    assert (
        by_folder["257.clutter"] == "clutter"
        and by_folder["182.self-propelled-lawn-mower"] == "self-propelled lawn mower"
    )
    assert all("-101" not in n and "_" not in n for n in ensemble)
    assert spec.ensemble_templates == "caltech101" and spec.download is None and "<data-root>" in spec.manual_steps


@pytest.mark.parametrize(
    ("spec_id", "images"), [("caltech101", "101_ObjectCategories"), ("caltech256", "256_ObjectCategories")]
)
def test_caltech_missing_category_folder(tmp_path, spec_id: str, images: str) -> None:
    base = WRITERS[spec_id](tmp_path, seed=1)
    spec = DATASETS.get(spec_id)
    victim = sorted(p for p in (base / images).iterdir() if p.name != "BACKGROUND_Google")[5]
    shutil.rmtree(victim)
    with pytest.raises(DatasetNotFoundError, match=f"found {spec.num_classes - 1} classes") as err:
        spec.loader(tmp_path, "all")
    _assert_layout_message(err, spec_id)
    shutil.rmtree(base / images)
    with pytest.raises(DatasetNotFoundError, match=f"no {images}/ folder") as err:
        spec.loader(tmp_path, "all")
    _assert_layout_message(err, spec_id)
    with pytest.raises(DatasetNotFoundError, match=f"no folder {base.name}"):
        spec.loader(tmp_path / "elsewhere", "all")
    with pytest.raises(ZSBenchError, match="no split 'test'"):
        spec.loader(tmp_path, "test")


@pytest.mark.parametrize("spec_id", ["caltech101", "caltech256"])
def test_caltech_category_without_images(tmp_path, spec_id: str) -> None:
    base = WRITERS[spec_id](tmp_path, seed=1)
    cats = base / ("101_ObjectCategories" if spec_id == "caltech101" else "256_ObjectCategories")
    victim = sorted(p for p in cats.iterdir() if p.name != "BACKGROUND_Google")[-1]
    for p in victim.iterdir():
        p.unlink()
    (victim / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetNotFoundError, match=f"no \\*\\.jpg images in {cats.name}/{victim.name}"):
        DATASETS.get(spec_id).loader(tmp_path, "all")


@pytest.mark.parametrize("spec_id", ["caltech101", "caltech256"])
def test_caltech_corrupt_image(tmp_path, spec_id: str) -> None:
    WRITERS[spec_id](tmp_path, seed=1)
    ds = DATASETS.get(spec_id).loader(tmp_path, "all")
    bad = ds.samples[3][0]
    bad.write_bytes(b"GIF89a broken")
    with pytest.raises(ZSBenchError, match=f"cannot decode image {bad}"):
        ds[3]
    assert ds[4][0].dtype == torch.uint8


@pytest.mark.parametrize("ds_id", ["caltech101", "caltech256"])
def test_caltech_same_as_torchvision(tmp_path, monkeypatch, ds_id: str) -> None:
    """torchvision's Caltech readers (integrity check off) give the same images and labels on the fixture."""
    import numpy as np
    import torchvision.datasets as tvd
    from dataset_fixtures import WRITERS

    cls = tvd.Caltech101 if ds_id == "caltech101" else tvd.Caltech256
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    WRITERS[ds_id](tmp_path, seed=2)
    ours = DATASETS.get(ds_id).loader(tmp_path, "all")
    theirs = cls(str(tmp_path)) if ds_id == "caltech256" else cls(str(tmp_path), target_type="category")
    assert len(theirs) == len(ours)
    assert theirs.categories == ours.classnames
    for i in range(len(ours)):
        im, label = theirs[i]
        img, our_label = ours[i]
        assert our_label == int(label)
        assert torch.equal(img, torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)), (ds_id, i)
