"""SUN397, Oxford-IIIT Pets, Flowers-102, FGVC-Aircraft and Stanford Cars: fixtures in the real layouts, loaders,
prompts, torchvision parity and one-line errors on bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_fixtures import WRITERS
from dataset_fixtures.cars import cars_annotations, cars_classnames
from dataset_fixtures.common import assert_missing_message
from dataset_fixtures.fgvc import fgvc_rows, fgvc_variants
from dataset_fixtures.flowers102 import flowers_plan
from dataset_fixtures.pets import PETS_BREEDS, pets_rows
from dataset_fixtures.sun397 import sun397_files, sun397_lines

import robustbench_zs.datasets  # noqa: F401  (registers the datasets)
from robustbench_zs.datasets import DATASETS
from robustbench_zs.datasets.files import decode_image
from robustbench_zs.datasets.prompts import prompt_set
from robustbench_zs.datasets.spec import load_metadata
from robustbench_zs.errors import DatasetNotFoundError, ZSBenchError

SEED = 3
IDS = ("sun397", "oxfordpets", "flowers102", "fgvc_aircraft", "stanfordcars")
FOLDERS = {
    "sun397": "SUN397",
    "oxfordpets": "oxford-iiit-pet",
    "flowers102": "flowers-102",
    "fgvc_aircraft": "fgvc-aircraft-2013b",
    "stanfordcars": "stanford_cars",
}
CLIP_BENCHMARK = load_metadata("clip_benchmark_en")
#: the official code's prompt data, where this checkout has the shared spec folder
PAPER_PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "spec" / "paper_prompts.json"

#: dataset -> (first paper prompt, first ensemble class name)
FIRST = {
    "sun397": ("This is a photo of a abbey", "abbey"),
    "oxfordpets": ("A photo of a abyssinian, a type of pet.", "Abyssinian"),
    "flowers102": ("A photo of a pink primrose, a type of flower.", "pink primrose"),
    "fgvc_aircraft": ("A photo of a boeing 707-320, a type of aircraft.", "707-320"),
    "stanfordcars": ("A photo of a am general hummer suv.", "AM General Hummer SUV 2000"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("groupb")
    for ds_id in IDS:
        WRITERS[ds_id](root, seed=SEED)
    return root


@pytest.fixture(scope="module")
def loaded(root):
    return {ds_id: DATASETS.get(ds_id).loader(root, DATASETS.get(ds_id).eval_split) for ds_id in IDS}


@pytest.fixture
def copy(root, tmp_path):
    """copy(ds_id) -> (a private data root holding only that dataset, its folder), for tests that break files."""

    def link_or_copy(src: str, dst: str) -> None:
        # images are hard-linked (fast); a test that breaks one unlinks it first, so the shared fixture stays intact
        if src.endswith(".jpg"):
            try:
                os.link(src, dst)
                return
            except OSError:  # no hard links here: copy
                pass
        shutil.copy2(src, dst)

    def make(ds_id: str) -> tuple[Path, Path]:
        shutil.copytree(root / FOLDERS[ds_id], tmp_path / FOLDERS[ds_id], copy_function=link_or_copy)
        return tmp_path, tmp_path / FOLDERS[ds_id]

    return make


def _rel(ds) -> list[str]:
    return [p.relative_to(ds.root).as_posix() for p, _ in ds.samples]


# ------------------------------------------------------------------------------------------- contents per dataset


def test_sun397_contents(loaded, root) -> None:
    ds = loaded["sun397"]
    expected = sorted(sun397_files(SEED), key=lambda f: (f[1], f[0]))
    assert ds.root == root / "SUN397"
    assert _rel(ds) == [rel for rel, _ in expected]
    assert ds.labels.tolist() == [y for _, y in expected]
    lines = (root / "SUN397" / "ClassName.txt").read_text().splitlines()
    assert ds.classnames == [line.split("/", 2)[2] for line in lines] == [line[3:] for line in sun397_lines()]
    assert ds.classnames[8] == "apartment_building/outdoor"


def test_pets_contents(loaded, root) -> None:
    ds = loaded["oxfordpets"]
    rows = pets_rows("test", SEED)
    assert _rel(ds) == [f"images/{image_id}.jpg" for image_id, *_ in rows]
    assert ds.labels.tolist() == [cls - 1 for _, cls, _, _ in rows]
    titled = [" ".join(word[:1].upper() + word[1:].lower() for word in b.split("_")) for b in PETS_BREEDS]
    assert ds.classnames == titled
    assert ds.classnames[:3] == ["Abyssinian", "American Bulldog", "American Pit Bull Terrier"]
    trainval = DATASETS.get("oxfordpets").loader(root, "trainval")
    assert trainval.labels.tolist() == [cls - 1 for _, cls, _, _ in pets_rows("trainval", SEED)]
    assert not set(_rel(trainval)) & set(_rel(ds))


def test_flowers_contents(loaded, root) -> None:
    labels, setid = flowers_plan(SEED)
    spec = DATASETS.get("flowers102")
    for split, key in (("test", "tstid"), ("train", "trnid"), ("val", "valid")):
        ds = loaded["flowers102"] if split == "test" else spec.loader(root, split)
        assert _rel(ds) == [f"jpg/image_{i:05d}.jpg" for i in setid[key].tolist()]
        assert ds.labels.tolist() == [int(labels[i - 1]) - 1 for i in setid[key].tolist()]
        assert sorted(set(ds.labels.tolist())) == list(range(102))
    ds = loaded["flowers102"]
    assert (
        ds.classnames[:2] == ["pink primrose", "hard-leaved pocket orchid"] and ds.classnames[-1] == "blackberry lily"
    )
    if PAPER_PROMPTS.is_file():
        assert ds.classnames == json.loads(PAPER_PROMPTS.read_text())["flowers102"]["classnames"]
    assert spec.paper_names(ds.classnames)[1] == "hard leaved pocket orchid"
    gray = decode_image(root / "flowers-102" / "jpg" / "image_00001.jpg")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_fgvc_contents(loaded, root) -> None:
    ds = loaded["fgvc_aircraft"]
    rows = fgvc_rows("test", SEED)
    assert _rel(ds) == [f"data/images/{i}.jpg" for i, _ in rows]
    assert ds.labels.tolist() == [y for _, y in rows]
    assert (
        ds.classnames
        == list(fgvc_variants())
        == (root / "fgvc-aircraft-2013b/data/variants.txt").read_text().splitlines()
    )
    assert ds.classnames[0] == "707-320" and "F/A-18" in ds.classnames and ds.classnames[-1] == "Yak-42"
    names = DATASETS.get("fgvc_aircraft").paper_names(ds.classnames)
    assert names[:2] == ["boeing 707-320", "boeing 727-200"]
    assert names[ds.classnames.index("A300B4")] == "a300b4" and names[ds.classnames.index("F/A-18")] == "f/a-18"
    trainval = DATASETS.get("fgvc_aircraft").loader(root, "trainval")
    assert trainval.labels.tolist() == [y for _, y in fgvc_rows("trainval", SEED)]


def test_cars_contents(loaded, root) -> None:
    ds = loaded["stanfordcars"]
    entries = cars_annotations("test", SEED)
    assert _rel(ds) == [f"cars_test/{e['fname']}" for e in entries]
    assert ds.labels.tolist() == [e["class"] - 1 for e in entries]
    assert ds.classnames == list(cars_classnames())
    assert ds.classnames[0] == "AM General Hummer SUV 2000" and ds.classnames[-1] == "smart fortwo Convertible 2012"
    names = DATASETS.get("stanfordcars").paper_names(ds.classnames)
    assert names[0] == "am general hummer suv" and names[ds.classnames.index("Ram C/V Cargo Van Minivan 2012")] == (
        "ram c v cargo van minivan"
    )
    train = DATASETS.get("stanfordcars").loader(root, "train")
    assert train.labels.tolist() == [e["class"] - 1 for e in cars_annotations("train", SEED)]
    assert _rel(train)[0] == "cars_train/00001.jpg"


def test_cars_mat_files_read_like_the_real_ones(root) -> None:
    from scipy.io import loadmat

    base = root / "stanford_cars"
    annos = loadmat(str(base / "cars_test_annos_withlabels.mat"), squeeze_me=True, struct_as_record=False)[
        "annotations"
    ]
    assert annos.shape == (196,) and annos[0]._fieldnames == [
        "bbox_x1",
        "bbox_y1",
        "bbox_x2",
        "bbox_y2",
        "class",
        "fname",
    ]
    assert annos[0].fname == "00001.jpg" and getattr(annos[0], "class") == cars_annotations("test", SEED)[0]["class"]
    raw = loadmat(str(base / "devkit" / "cars_meta.mat"))["class_names"]
    assert raw.shape == (1, 196) and raw.dtype == object  # a 1 x 196 cell
    unlabelled = loadmat(str(base / "devkit" / "cars_test_annos.mat"), squeeze_me=True, struct_as_record=False)
    assert "class" not in unlabelled["annotations"][0]._fieldnames


# ------------------------------------------------------------------------------------------ contract and prompts


@pytest.mark.parametrize("ds_id", IDS)
def test_contract(loaded, ds_id: str) -> None:
    spec, ds = DATASETS.get(ds_id), loaded[ds_id]
    assert spec.folder == FOLDERS[ds_id] and spec.eval_split in spec.splits
    assert len(ds.classnames) == spec.num_classes and len(ds) >= spec.num_classes
    assert sorted(set(ds.labels.tolist())) == list(range(spec.num_classes))
    for i in (0, len(ds) // 2, len(ds) - 1):
        img, label = ds[i]
        assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3 and label == ds.labels[i]
        pil, label2 = ds.item_pil(i)
        assert pil.mode == "RGB" and pil.size == (img.shape[2], img.shape[1]) and label2 == label
    if ds_id != "flowers102":  # the first image written (flowers: image_00001.jpg) is grayscale, as some real ones are
        gray = ds[0][0]
        assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert spec.native_size is None and spec.paper_preprocess == "resize256_crop224"
    assert len(ds.fingerprint()) == 64 and ds.fingerprint() == ds.fingerprint()


@pytest.mark.parametrize("ds_id", IDS)
def test_prompts(loaded, ds_id: str) -> None:
    spec, ds = DATASETS.get(ds_id), loaded[ds_id]
    paper_first, ensemble_first = FIRST[ds_id]
    assert spec.templates[0].format(spec.paper_names(ds.classnames)[0]) == paper_first
    names, templates, _ = prompt_set(spec, ds, "paper")
    assert len(names) == spec.num_classes and templates[0].format(names[0]) == paper_first
    names, templates, _ = prompt_set(spec, ds, "ensemble")
    assert len(names) == spec.num_classes and names[0] == ensemble_first
    assert len(set(names)) == spec.num_classes


def test_sun397_name_rules(loaded) -> None:
    spec, ds = DATASETS.get("sun397"), loaded["sun397"]
    k = ds.classnames.index("apartment_building/outdoor")
    assert spec.paper_names(ds.classnames)[k] == "apartment building outdoor"
    assert spec.ensemble_names(ds)[k] == "apartment building outdoor"


def test_pets_and_flowers_ensemble_names_are_clip_benchmark(loaded) -> None:
    cb = CLIP_BENCHMARK["classnames"]
    assert DATASETS.get("oxfordpets").ensemble_names(loaded["oxfordpets"]) == cb["pets"]
    assert loaded["oxfordpets"].classnames == cb["pets"]  # torchvision's title-cased names match CLIP_benchmark's
    assert DATASETS.get("flowers102").ensemble_names(loaded["flowers102"]) == cb["flowers"]


def test_writers_are_deterministic(tmp_path) -> None:
    for ds_id in ("oxfordpets", "fgvc_aircraft"):
        a, b, c = (WRITERS[ds_id](tmp_path / name, seed=s) for name, s in (("a", 1), ("b", 1), ("c", 2)))
        files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
        assert files != sorted(p.relative_to(c).as_posix() for p in c.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------- torchvision parity


def test_torchvision_reads_the_fixtures_alike(root, loaded, monkeypatch) -> None:
    """torchvision's own classes, run on the fixtures, give the same images, labels and class names."""
    tvd = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(tvd.Flowers102, "_check_integrity", lambda self: True)  # md5 of the real .mat files

    pets = tvd.OxfordIIITPet(str(root), split="test")
    assert [str(p) for p in pets._images] == [str(p) for p, _ in loaded["oxfordpets"].samples]
    assert pets._labels == loaded["oxfordpets"].labels.tolist() and pets.classes == loaded["oxfordpets"].classnames

    flowers = tvd.Flowers102(str(root), split="test")
    assert [str(p) for p in flowers._image_files] == [str(p) for p, _ in loaded["flowers102"].samples]
    assert flowers._labels == loaded["flowers102"].labels.tolist()

    fgvc = tvd.FGVCAircraft(str(root), split="test", annotation_level="variant")
    assert fgvc._image_files == [str(p) for p, _ in loaded["fgvc_aircraft"].samples]
    assert (
        fgvc._labels == loaded["fgvc_aircraft"].labels.tolist() and fgvc.classes == loaded["fgvc_aircraft"].classnames
    )

    cars = tvd.StanfordCars(str(root), split="test")
    assert [(p, int(y)) for p, y in cars._samples] == [(str(p), y) for p, y in loaded["stanfordcars"].samples]
    assert cars.classes == loaded["stanfordcars"].classnames

    sun = tvd.SUN397(str(root))  # torchvision keeps rglob order; compare as sets
    assert sorted(zip(map(str, sun._image_files), sun._labels, strict=True)) == sorted(
        (str(p), y) for p, y in loaded["sun397"].samples
    )
    assert sun.classes == loaded["sun397"].classnames


# ---------------------------------------------------------------------------------------------------- bad input


def _assert_layout(err, ds_id: str) -> None:
    spec, msg = DATASETS.get(ds_id), str(err.value)
    assert_missing_message(msg, spec)


@pytest.mark.parametrize("ds_id", IDS)
def test_missing_root_and_unknown_split(tmp_path, root, ds_id: str) -> None:
    spec = DATASETS.get(ds_id)
    with pytest.raises(DatasetNotFoundError) as err:
        spec.loader(tmp_path / "nowhere", spec.eval_split)
    assert FOLDERS[ds_id] in str(err.value)
    _assert_layout(err, ds_id)
    with pytest.raises(ZSBenchError, match="no split 'bogus'"):
        spec.loader(root, "bogus")


@pytest.mark.parametrize(
    ("ds_id", "metadata"),
    [
        ("sun397", "ClassName.txt"),
        ("oxfordpets", "annotations/test.txt"),
        ("flowers102", "setid.mat"),
        ("flowers102", "imagelabels.mat"),
        ("fgvc_aircraft", "data/variants.txt"),
        ("fgvc_aircraft", "data/images_variant_test.txt"),
        ("stanfordcars", "devkit/cars_meta.mat"),
        ("stanfordcars", "cars_test_annos_withlabels.mat"),
    ],
)
def test_missing_metadata_file(copy, ds_id: str, metadata: str) -> None:
    data_root, base = copy(ds_id)
    (base / metadata).unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        DATASETS.get(ds_id).loader(data_root, DATASETS.get(ds_id).eval_split)
    assert f"missing {metadata}" in str(err.value)
    _assert_layout(err, ds_id)


@pytest.mark.parametrize("ds_id", IDS)
def test_corrupt_image_names_its_path(copy, ds_id: str) -> None:
    data_root, _ = copy(ds_id)
    ds = DATASETS.get(ds_id).loader(data_root, DATASETS.get(ds_id).eval_split)
    path = ds.samples[1][0]
    path.unlink()  # a hard link to the shared fixture's file
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ZSBenchError, match="cannot decode image") as err:
        ds[1]
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ZSBenchError, match="cannot decode image"):
        ds.item_pil(1)
    assert ds[0][0].dtype == torch.uint8  # the other items still read


@pytest.mark.parametrize("ds_id", IDS)
def test_missing_listed_image(copy, ds_id: str) -> None:
    data_root, _ = copy(ds_id)
    path = DATASETS.get(ds_id).loader(data_root, DATASETS.get(ds_id).eval_split).samples[-1][0]
    path.unlink()
    if ds_id == "sun397":  # a whole-folder dataset: one image fewer, nothing to report
        assert len(DATASETS.get(ds_id).loader(data_root, "all")) == 396
        return
    with pytest.raises(DatasetNotFoundError, match="1 images listed in .* are missing") as err:
        DATASETS.get(ds_id).loader(data_root, DATASETS.get(ds_id).eval_split)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("ds_id", "file", "edit", "match"),
    [
        ("sun397", "ClassName.txt", lambda t: t.replace("/a/abbey\n", "abbey\n"), "bad line 'abbey'"),
        ("sun397", "ClassName.txt", lambda t: t.replace("/a/alley\n", "/a/abbey\n"), "appears twice"),
        ("oxfordpets", "annotations/test.txt", lambda t: t.replace(" 1 1 1\n", " one 1 1\n", 1), "bad line"),
        ("oxfordpets", "annotations/test.txt", lambda t: t.replace(" 2 2 1\n", " 38 2 1\n", 1), "class id 1..37"),
        ("oxfordpets", "annotations/test.txt", lambda t: t.replace(" 2 2 1\n", " 1 2 1\n", 1), "class id 1 is"),
        (
            "fgvc_aircraft",
            "data/images_variant_test.txt",
            lambda t: t.replace(" 707-320\n", " 707-999\n"),
            "not in variants",
        ),
        ("fgvc_aircraft", "data/images_variant_test.txt", lambda t: "0000001\n" + t, "bad line '0000001'"),
        ("fgvc_aircraft", "data/variants.txt", lambda t: t.replace("727-200\n", "707-320\n"), "listed twice"),
    ],
)
def test_malformed_metadata_line(copy, ds_id: str, file: str, edit, match: str) -> None:
    data_root, base = copy(ds_id)
    (base / file).write_text(edit((base / file).read_text()))
    with pytest.raises(ZSBenchError, match=match) as err:
        DATASETS.get(ds_id).loader(data_root, DATASETS.get(ds_id).eval_split)
    assert str(base / file) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("ds_id", "file"),
    [
        ("sun397", "ClassName.txt"),
        ("oxfordpets", "annotations/test.txt"),
        ("fgvc_aircraft", "data/variants.txt"),
    ],
)
def test_metadata_that_is_not_text(copy, ds_id: str, file: str) -> None:
    data_root, base = copy(ds_id)
    (base / file).write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ZSBenchError, match="not UTF-8") as err:
        DATASETS.get(ds_id).loader(data_root, DATASETS.get(ds_id).eval_split)
    assert str(base / file) in str(err.value)


@pytest.mark.parametrize(
    ("ds_id", "file", "content", "match"),
    [
        ("flowers102", "setid.mat", None, "corrupt MATLAB file"),
        ("flowers102", "setid.mat", {"trnid": [[1.0]], "valid": [[2.0]]}, "no 'tstid' entry"),
        ("flowers102", "setid.mat", {"tstid": [[1.5, 2.0]]}, "positive whole numbers"),
        ("flowers102", "setid.mat", {"tstid": [[1.0, 99999.0]]}, "image id 99999"),
        ("flowers102", "imagelabels.mat", {"labels": [[1.0, 103.0]]}, r"outside \[1, 102\]"),
        ("stanfordcars", "devkit/cars_meta.mat", None, "corrupt MATLAB file"),
        ("stanfordcars", "devkit/cars_meta.mat", {"names": [["x"]]}, "no 'class_names' entry"),
        ("stanfordcars", "cars_test_annos_withlabels.mat", None, "corrupt MATLAB file"),
        ("stanfordcars", "cars_test_annos_withlabels.mat", {"annos": [[1.0]]}, "no 'annotations' entry"),
    ],
)
def test_malformed_mat_file(copy, ds_id: str, file: str, content, match: str) -> None:
    from scipy.io import savemat

    data_root, base = copy(ds_id)
    if content is None:
        (base / file).write_bytes(b"MATLAB 5.0 MAT-file, but then nothing" + bytes(range(200)))
    else:
        savemat(str(base / file), {k: np.asarray(v) for k, v in content.items()})
    with pytest.raises(ZSBenchError, match=match) as err:
        DATASETS.get(ds_id).loader(data_root, DATASETS.get(ds_id).eval_split)
    assert str(base / file) in str(err.value) and "\n" not in str(err.value)


def test_cars_unlabelled_test_annotations(copy) -> None:
    """The devkit's cars_test_annos.mat (no class field) put in place of the labelled file is named as such."""
    data_root, base = copy("stanfordcars")
    shutil.copy(base / "devkit" / "cars_test_annos.mat", base / "cars_test_annos_withlabels.mat")
    with pytest.raises(ZSBenchError, match="no 'class' field") as err:
        DATASETS.get("stanfordcars").loader(data_root, "test")
    assert "cars_test_annos_withlabels.mat" in str(err.value)


def test_cars_class_out_of_range(copy) -> None:
    from dataset_fixtures.cars import ANNOTATION_FIELDS, _struct_array
    from scipy.io import savemat

    data_root, base = copy("stanfordcars")
    entries = cars_annotations("test", SEED)
    entries[5]["class"] = 197
    savemat(str(base / "cars_test_annos_withlabels.mat"), {"annotations": _struct_array(entries, ANNOTATION_FIELDS)})
    with pytest.raises(ZSBenchError, match="annotation 6 is not") as err:
        DATASETS.get("stanfordcars").loader(data_root, "test")
    assert str(base / "cars_test_annos_withlabels.mat") in str(err.value)


@pytest.mark.parametrize(
    ("ds_id", "file", "edit", "found"),
    [
        ("sun397", "ClassName.txt", lambda t: t.replace("/y/youth_hostel\n", ""), 396),
        ("fgvc_aircraft", "data/variants.txt", lambda t: t + "A350\n", 101),
        (
            "oxfordpets",
            "annotations/test.txt",
            lambda t: "".join(ln + "\n" for ln in t.splitlines() if " 37 " not in ln),
            36,
        ),
    ],
)
def test_wrong_class_count(copy, ds_id: str, file: str, edit, found: int) -> None:
    data_root, base = copy(ds_id)
    (base / file).write_text(edit((base / file).read_text()))
    with pytest.raises(DatasetNotFoundError, match=f"found {found} classes, expected") as err:
        DATASETS.get(ds_id).loader(data_root, DATASETS.get(ds_id).eval_split)
    _assert_layout(err, ds_id)


def test_cars_wrong_class_count(copy) -> None:
    from scipy.io import savemat

    data_root, base = copy("stanfordcars")
    savemat(
        str(base / "devkit" / "cars_meta.mat"), {"class_names": np.array([list(cars_classnames())[:195]], dtype=object)}
    )
    with pytest.raises(DatasetNotFoundError, match="found 195 classes, expected 196"):
        DATASETS.get("stanfordcars").loader(data_root, "test")


def test_sun397_layout_details(copy) -> None:
    """Strays are ignored (an unlisted folder, non-``sun_*.jpg`` files); a listed class folder must exist."""
    data_root, base = copy("sun397")
    first = next((base / "a" / "abbey").iterdir())
    (base / "z" / "zen_garden").mkdir(parents=True)
    shutil.copy(first, base / "z" / "zen_garden" / "sun_aaaaaaaaaaaaaaaa.jpg")
    shutil.copy(first, base / "a" / "abbey" / "thumbnail.jpg")
    (base / "a" / "abbey" / "sun_notes.txt").write_text("x")
    ds = DATASETS.get("sun397").loader(data_root, "all")
    assert len(ds) == 397 and ds.samples[0][0] == first
    shutil.rmtree(base / "y" / "youth_hostel")
    with pytest.raises(
        DatasetNotFoundError, match="1 class folders listed in ClassName.txt are missing, e.g. y/youth_hostel"
    ):
        DATASETS.get("sun397").loader(data_root, "all")


def test_pets_ignores_unlisted_files(loaded, root) -> None:
    assert (root / "oxford-iiit-pet" / "images" / "Abyssinian_999.mat").is_file()
    assert all(p.suffix == ".jpg" for p, _ in loaded["oxfordpets"].samples)


def test_download_and_manual_steps() -> None:
    for ds_id, cls in (
        ("sun397", "SUN397"),
        ("oxfordpets", "OxfordIIITPet"),
        ("flowers102", "Flowers102"),
        ("fgvc_aircraft", "FGVCAircraft"),
    ):
        assert DATASETS.get(ds_id).download.torchvision_class == cls
    assert DATASETS.get("fgvc_aircraft").download.calls == ({"split": "test", "annotation_level": "variant"},)
    cars = DATASETS.get("stanfordcars")
    assert cars.download is None
    for needle in ("<data-root>/stanford_cars", "jessicali9530/stanford-cars-dataset", "car_devkit.tgz"):
        assert needle in cars.manual_steps
    assert "cars_test_annos_withlabels.mat" in cars.manual_steps
