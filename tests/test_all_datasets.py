"""Contract tests generated from the dataset registry: every dataset, written in its real layout, through its loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_fixtures import WRITERS

from robustbench_zs.cli import main
from robustbench_zs.datasets import DATASETS
from robustbench_zs.datasets.preprocess import PreprocessedDataset, resolve_preprocess
from robustbench_zs.datasets.prompts import prompt_set
from robustbench_zs.models import ModelSpec
from robustbench_zs.models.loader import model_preprocess_cfg

ON_DISK = [k for k, s in DATASETS.items() if s.needs_root]
PAPER_16 = [
    "cifar10", "cifar100", "stl10", "sun397", "food101", "oxfordpets", "flowers102", "dtd", "eurosat",
    "fgvc_aircraft", "tinyimagenet", "imagenet", "caltech101", "caltech256", "stanfordcars", "pcam",
]  # fmt: skip

#: dataset -> (first prompt of the paper set (both for PCAM), first prompt of the ensemble set)
FIRST_PROMPTS = {
    "cifar10": (["This is a photo of a airplane"], "a photo of a airplane."),
    "cifar100": (["This is a photo of a apple"], "a photo of a apple."),
    "stl10": (["This is a photo of a airplane"], "a photo of a airplane."),
    "sun397": (["This is a photo of a abbey"], "a photo of a abbey."),
    "food101": (["A photo of apple pie, a type of food."], "a photo of apple pie, a type of food."),
    "oxfordpets": (["A photo of a abyssinian, a type of pet."], "a photo of a Abyssinian, a type of pet."),
    "flowers102": (["A photo of a pink primrose, a type of flower."], "a photo of a pink primrose, a type of flower."),
    "dtd": (["A surface with a banded texture."], "a photo of a banded texture."),
    "eurosat": (["A centered satellite photo of annual crop land."], "a centered satellite photo of annual crop land."),
    "fgvc_aircraft": (
        ["A photo of a boeing 707-320, a type of aircraft."],
        "a photo of a 707-320, a type of aircraft.",
    ),
    "tinyimagenet": (["This is a photo of a goldfish"], "a bad photo of a goldfish."),
    "imagenet": (["This is a photo of a tench"], "a bad photo of a tench."),
    "caltech101": (["A photo of a faces."], "a photo of a off-center face."),
    "caltech256": (["A photo of a ak47."], "a photo of a AK-47."),
    "stanfordcars": (["A photo of a am general hummer suv."], "a photo of a AM General Hummer SUV 2000."),
    "pcam": (
        ["Tthis is a photo of healthy lymph node tissue.", "This is a photo of lymph node tumor tissue."],
        "a histopathology slide showing lymph node",
    ),
}


def test_the_sixteen_datasets_are_registered_with_writers() -> None:
    assert set(PAPER_16) <= set(DATASETS.names())
    assert sorted(ON_DISK) == sorted(PAPER_16)
    assert sorted(WRITERS) == sorted(ON_DISK)
    assert sorted(FIRST_PROMPTS) == sorted(PAPER_16)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("all16")
    for ds_id in ON_DISK:
        WRITERS[ds_id](root, seed=1)
    return root


@pytest.fixture(scope="module")
def loaded(data_root):
    return {k: DATASETS.get(k).loader(data_root, DATASETS.get(k).eval_split) for k in ON_DISK}


def _labels(ds) -> np.ndarray:
    if hasattr(ds, "labels"):
        return np.asarray(ds.labels)
    return np.array([ds[i][1] for i in range(len(ds))])


@pytest.mark.parametrize("ds_id", PAPER_16)
def test_loader_contract(loaded, ds_id: str) -> None:
    spec, ds = DATASETS.get(ds_id), loaded[ds_id]
    assert len(ds.classnames) == spec.num_classes
    labels = _labels(ds)
    assert len(labels) == len(ds) > 0
    assert labels.min() >= 0 and labels.max() < spec.num_classes
    assert [ds[i][1] for i in (0, len(ds) - 1)] == [int(labels[0]), int(labels[-1])]
    assert len(ds.fingerprint()) == 64 and ds.fingerprint() == ds.fingerprint()
    img, _ = ds[0]
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
    if spec.native_size is not None:
        assert tuple(img.shape[1:]) == spec.native_size


PROFILES = {
    "paper": lambda spec: spec.native_size if spec.paper_preprocess == "native" else (224, 224),
    "standard-vitb32": lambda spec: (224, 224),
    "standard-tiny": lambda spec: (32, 32),
}
MODEL_CFGS = {
    "paper": None,
    "standard-vitb32": model_preprocess_cfg(ModelSpec("ViT-B-32", "openai")),
    "standard-tiny": model_preprocess_cfg(ModelSpec("zsbench-tiny", "random")),
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("ds_id", PAPER_16)
def test_images_per_profile(loaded, ds_id: str, profile: str) -> None:
    spec, ds = DATASETS.get(ds_id), loaded[ds_id]
    pre = resolve_preprocess(profile.split("-")[0], spec, MODEL_CFGS[profile])
    view = PreprocessedDataset(ds, pre)
    for i in sorted({0, len(ds) // 2, len(ds) - 1}):
        img, label = view[i]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, *PROFILES[profile](spec))
        x = img.float() / 255  # what the evaluator feeds the model
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert label == ds[i][1]
    assert pre.describe(spec)["attack_resolution"] == "x".join(map(str, PROFILES[profile](spec)))


@pytest.mark.parametrize("ds_id", PAPER_16)
def test_first_prompts(loaded, ds_id: str) -> None:
    spec, ds = DATASETS.get(ds_id), loaded[ds_id]
    paper_expected, ensemble_expected = FIRST_PROMPTS[ds_id]
    names, templates, recorded = prompt_set(spec, ds, "paper")
    assert recorded == "paper" and len(names) == spec.num_classes
    assert [templates[0].format(n) for n in names[: len(paper_expected)]] == paper_expected
    names, templates, recorded = prompt_set(spec, ds, "ensemble")
    assert recorded == "ensemble" and len(names) == spec.num_classes
    assert templates[0].format(names[0]) == ensemble_expected
    assert len(set(names)) >= spec.num_classes - 2  # ImageNet's curated names are unique; a couple of ties at most


def test_datasets_check_finds_all(data_root, capsys) -> None:
    assert main(["datasets", "check", "--data-root", str(data_root)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[3:]}
    for ds_id in PAPER_16:
        assert rows[ds_id][1] == "found", rows[ds_id]
        assert int(rows[ds_id][3]) == DATASETS.get(ds_id).num_classes


def test_datasets_check_on_an_empty_root(tmp_path, capsys) -> None:
    assert main(["datasets", "check", "--data-root", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[3:]}
    for ds_id in PAPER_16:
        assert rows[ds_id].split()[1] == "missing" and f"zsbench datasets download {ds_id}" in rows[ds_id]


@pytest.mark.parametrize("ds_id", PAPER_16)
def test_download_is_torchvision_or_manual(ds_id: str) -> None:
    spec = DATASETS.get(ds_id)
    if spec.download is None:
        assert spec.manual_steps and "<data-root>" in spec.manual_steps
    else:
        import torchvision.datasets as tvd

        assert hasattr(tvd, spec.download.torchvision_class)


def test_download_manual_steps_are_printed(tmp_path, capsys) -> None:
    assert main(["datasets", "download", "imagenet,pcam", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "imagenet: no automatic download" in out and "pcam: no automatic download" in out
    assert str(tmp_path) in out and "<data-root>" not in out


def test_download_through_torchvision(tmp_path, capsys, monkeypatch) -> None:
    import torchvision.datasets as tvd

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, download, train):
            calls.append((root, download, train))
            WRITERS["cifar10"](Path(root), seed=0)

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    assert main(["datasets", "download", "cifar10", "--data-root", str(tmp_path)]) == 0
    assert calls == [(str(tmp_path), True, False), (str(tmp_path), True, True)]
    assert "cifar10: ready (" in capsys.readouterr().out


def test_download_failure_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    import torchvision.datasets as tvd

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore")

    monkeypatch.setattr(tvd, "DTD", Offline)
    assert main(["datasets", "download", "dtd", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "DTD download failed" in err and "name resolution" in err


def test_download_unknown_name(tmp_path, capsys) -> None:
    assert main(["datasets", "download", "cifar11", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cifar11" in err and "cifar10" in err
