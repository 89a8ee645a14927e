"""Preprocessing profiles (against torchvision and open_clip) and the decoded-tensor cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
from dataset_fixtures import write_tinyimagenet
from PIL import Image

from robustbench_zs.cli import main
from robustbench_zs.datasets import DATASETS, select_subset
from robustbench_zs.datasets import files as files_mod
from robustbench_zs.datasets.cache import TensorCache
from robustbench_zs.datasets.preprocess import Preprocess, PreprocessedDataset, resolve_preprocess
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.models import ModelSpec
from robustbench_zs.models.loader import model_preprocess_cfg

SIZES = [(37, 61), (300, 200), (224, 224), (64, 64), (500, 333), (256, 255)]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_paper_profile_equals_torchvision_resize256_crop224(h: int, w: int) -> None:
    im = Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8))
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(im)
    pre = resolve_preprocess("paper", DATASETS.get("tinyimagenet"))
    out = pre.apply(im)
    assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)
    assert torch.equal(out, ref)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_standard_profile_equals_open_clip_eval_transform(h: int, w: int) -> None:
    im = Image.fromarray(np.random.default_rng(h + w).integers(0, 256, (h, w, 3), dtype=np.uint8))
    cfg = model_preprocess_cfg(ModelSpec("ViT-B-32", "openai"))
    assert cfg == {"image_size": (224, 224), "interpolation": "bicubic", "resize_mode": "shortest"}
    resize, crop = open_clip.image_transform(224, is_train=False).transforms[:2]
    ref = T.PILToTensor()(crop(resize(im)))
    out = resolve_preprocess("standard", DATASETS.get("tinyimagenet"), cfg).apply(im)
    assert torch.equal(out, ref)


def test_profiles_per_dataset() -> None:
    cfg = model_preprocess_cfg(ModelSpec("zsbench-tiny", "random"))
    assert cfg["image_size"] == (32, 32)
    cifar, tiny = DATASETS.get("cifar10"), DATASETS.get("tinyimagenet")
    assert resolve_preprocess("paper", cifar).is_native
    assert resolve_preprocess("paper", cifar).describe(cifar)["attack_resolution"] == "32x32"
    assert resolve_preprocess("paper", tiny).describe(tiny)["attack_resolution"] == "224x224"
    std = resolve_preprocess("standard", tiny, cfg)
    assert std.crop == (32, 32) and std.interpolation == "bicubic"
    assert resolve_preprocess("standard", tiny, cfg, "native").output_size(tiny) == (64, 64)
    with pytest.raises(ZSBenchError, match="goes with --preprocess standard"):
        resolve_preprocess("paper", tiny, cfg, "native")
    with pytest.raises(ZSBenchError, match="unknown preprocessing profile"):
        resolve_preprocess("fancy", tiny, cfg)


def test_squash_and_longest_modes() -> None:
    im = Image.fromarray(np.full((20, 40, 3), 200, dtype=np.uint8))
    assert Preprocess("standard", "squash", None, (16, 16), "bicubic").apply(im).shape == (3, 16, 16)
    out = Preprocess("standard", "longest", None, (16, 16), "bicubic").apply(im)
    assert out.shape == (3, 16, 16)
    assert int(out[:, 0, 8].max()) == 0 and int(out[:, 8, 8].min()) > 150  # padded top rows, image in the middle


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_tinyimagenet(root, n_val_per_class=1, seed=3)
    return root


def _count_opens(monkeypatch) -> list[Path]:
    opened: list[Path] = []
    real_decode, real_open = files_mod.decode_image, files_mod.open_rgb

    def decode(path):
        opened.append(path)
        return real_decode(path)

    def open_rgb(path):
        opened.append(path)
        return real_open(path)

    monkeypatch.setattr(files_mod, "decode_image", decode)
    monkeypatch.setattr(files_mod, "open_rgb", open_rgb)
    return opened


def test_cache_fills_only_requested_rows_and_rereads_nothing(tiny_data, tmp_path, monkeypatch) -> None:
    spec = DATASETS.get("tinyimagenet")
    data = spec.loader(tiny_data, "val")
    pre = resolve_preprocess("paper", spec)
    cache = TensorCache(tmp_path / "tensors")
    opened = _count_opens(monkeypatch)

    sub = select_subset(len(data), 30, seed=1)
    cached, info = cache.prepare(spec, "val", data, pre, sub.indices)
    assert info["decoded"] == 30 and len(opened) == 30
    direct = PreprocessedDataset(data, pre)
    for i in sub.indices[:5]:
        assert torch.equal(cached[i][0], direct[i][0]) and cached[i][1] == direct[i][1]
    unfilled = next(i for i in range(len(data)) if i not in set(sub.indices))
    with pytest.raises(IndexError):
        cached[unfilled]
    # training batches: one gather, the same rows and labels in the order asked for
    order = sub.indices[::-1][:7]
    images, labels = cached.take(order)
    assert images.dtype == torch.uint8 and images.shape == (7, *cached[int(order[0])][0].shape)
    assert all(
        torch.equal(images[k], cached[int(i)][0]) and labels[k] == cached[int(i)][1] for k, i in enumerate(order)
    )
    with pytest.raises(IndexError, match="not in the tensor cache"):
        cached.take([int(order[0]), unfilled])

    opened.clear()
    data2 = spec.loader(tiny_data, "val")  # a fresh process would reload the split: listing files, no decoding
    cached2, info2 = cache.prepare(spec, "val", data2, pre, sub.indices)
    assert info2 == {**info, "decoded": 0} and opened == []
    assert all(torch.equal(cached2[i][0], cached[i][0]) for i in sub.indices)

    bigger = select_subset(len(data), 50, seed=2).indices
    _, info3 = cache.prepare(spec, "val", data2, pre, bigger)
    assert info3["decoded"] == len(set(bigger) - set(sub.indices.tolist()))


def test_cache_key_follows_content_and_profile(tiny_data, tmp_path) -> None:
    spec = DATASETS.get("tinyimagenet")
    data = spec.loader(tiny_data, "val")
    cache = TensorCache(tmp_path / "tensors")
    idx = np.arange(4)
    _, a = cache.prepare(spec, "val", data, resolve_preprocess("paper", spec), idx)
    cfg = model_preprocess_cfg(ModelSpec("zsbench-tiny", "random"))
    _, b = cache.prepare(spec, "val", data, resolve_preprocess("standard", spec, cfg), idx)
    assert a["key"] != b["key"] and b["decoded"] == 4
    meta = json.loads((Path(a["folder"]) / "meta.json").read_text())
    assert meta["key"] == a["key"] and meta["shape"] == [len(data), 3, 224, 224]


def test_damaged_cache_entry_is_rebuilt(tiny_data, tmp_path) -> None:
    spec = DATASETS.get("tinyimagenet")
    data = spec.loader(tiny_data, "val")
    pre = resolve_preprocess("paper", spec)
    cache = TensorCache(tmp_path / "tensors")
    cached, info = cache.prepare(spec, "val", data, pre, np.arange(3))
    first = cached[1][0].clone()
    (Path(info["folder"]) / "filled.npy").write_bytes(b"not a numpy file")
    cached2, info2 = cache.prepare(spec, "val", data, pre, np.arange(3))
    assert info2["decoded"] == 3 and torch.equal(cached2[1][0], first)


def test_two_processes_creating_one_entry_never_delete_each_others_files(tiny_data, tmp_path, monkeypatch) -> None:
    """Another process creates and fills the same entry while this one is creating it (between its check and its
    rename): neither loses a file, and this one uses the entry that won, with every image right. (Before, the second
    creator deleted the first's half-made folder: `cannot write .../labels.npy` in a run beside another.)"""
    spec = DATASETS.get("tinyimagenet")
    data = spec.loader(tiny_data, "val")
    pre = resolve_preprocess("paper", spec)
    root = tmp_path / "tensors"
    real_rename = os.rename
    raced = []

    def rename(src, dst):
        if not raced and str(src).endswith(".tmp") and Path(src).is_dir():
            raced.append(None)  # once: the other process's own rename goes through
            raced[0] = TensorCache(root).prepare(spec, "val", data, pre, np.arange(4))  # the other process wins
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    cached, info = TensorCache(root).prepare(spec, "val", data, pre, np.arange(6))
    assert raced and raced[0][1]["folder"] == info["folder"]
    assert info["decoded"] == 2  # the 4 images the other process decoded are not decoded again
    direct = PreprocessedDataset(data, pre)
    assert all(torch.equal(cached[i][0], direct[i][0]) for i in range(6))
    assert sorted(p.name for p in root.iterdir()) == [Path(info["folder"]).name]  # no temporary folder left


def test_interrupted_fill_keeps_finished_rows(tiny_data, tmp_path, monkeypatch) -> None:
    spec = DATASETS.get("tinyimagenet")
    data = spec.loader(tiny_data, "val")
    pre = resolve_preprocess("paper", spec)
    cache = TensorCache(tmp_path / "tensors")
    monkeypatch.setattr("robustbench_zs.datasets.cache.CHUNK", 64)
    real = files_mod.open_rgb
    calls = {"n": 0}

    def flaky(path):
        calls["n"] += 1
        if calls["n"] > 130:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(files_mod, "open_rgb", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache.prepare(spec, "val", data, pre, np.arange(200))
    monkeypatch.setattr(files_mod, "open_rgb", real)
    _, info = cache.prepare(spec, "val", data, pre, np.arange(200))
    assert info["decoded"] == 200 - 128  # two full batches of 64 were flushed and marked before the interruption


TINY_ARGS = ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]


def test_second_run_reads_no_image_file_and_matches(tiny_data, tmp_path, monkeypatch, capsys) -> None:
    opened = _count_opens(monkeypatch)
    base = ["run", "--datasets", "tinyimagenet", "--data-root", str(tiny_data), "--n", "40", "--steps", "2"]
    base += ["--preprocess", "paper"]
    base += ["--eps", "1", *TINY_ARGS]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert len(opened) == 40
    opened.clear()
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    assert opened == []  # every image came from the tensor cache
    recs = {}
    for run in ("a", "b"):
        for p in sorted((tmp_path / run / "records").rglob("*.json")):
            r = json.loads(p.read_text())
            recs.setdefault(run, []).append((r["record_key"], r["result"], r["run"]["tensor_cache"]["decoded"]))
    assert [(k, res) for k, res, _ in recs["a"]] == [(k, res) for k, res, _ in recs["b"]]
    assert [d for *_, d in recs["b"]] == [0, 0]
    profile = json.loads(next((tmp_path / "a" / "records").rglob("*.json")).read_text())["profile"]
    assert profile["preprocess"]["attack_resolution"] == "224x224" and profile["preprocess"]["profile"] == "paper"


def test_no_tensor_cache_gives_the_same_numbers(tiny_data, tmp_path, monkeypatch) -> None:
    base = ["run", "--datasets", "tinyimagenet", "--data-root", str(tiny_data), "--n", "24", "--attack", "none"]
    assert main([*base, *TINY_ARGS, "--out", str(tmp_path / "a")]) == 0
    opened = _count_opens(monkeypatch)
    assert main([*base, *TINY_ARGS, "--no-tensor-cache", "--out", str(tmp_path / "b")]) == 0
    assert len(opened) == 24
    ra = json.loads(next((tmp_path / "a" / "records").rglob("*.json")).read_text())
    rb = json.loads(next((tmp_path / "b" / "records").rglob("*.json")).read_text())
    assert ra["result"] == rb["result"] and rb["run"]["tensor_cache"] is None


def test_standard_native_on_mixed_sizes_is_refused(capsys, tmp_path) -> None:
    from robustbench_zs.datasets.spec import DatasetSpec

    mixed = DatasetSpec(
        id="mixed", name="Mixed", num_classes=2, splits=("test",), eval_split="test", templates=("{}",),
        layout="x", source="y", loader=lambda r, s: None, manual_steps="z",
    )  # fmt: skip
    with pytest.raises(ZSBenchError, match="differ in size"):
        resolve_preprocess("standard", mixed, None, "native")
    argv = ["run", "--datasets", "cifar10", "--attack-resolution", "native", "--profile", "paper"]
    argv += ["--data-root", str(tmp_path), *TINY_ARGS]
    assert main(argv) == 2
    assert "goes with --preprocess standard" in capsys.readouterr().err


def test_python_api_load_dataset_and_evaluate(tiny_data, tmp_path) -> None:
    from robustbench_zs import create_classifier, evaluate, load_dataset
    from robustbench_zs.attacks import Threat

    ds = load_dataset("tinyimagenet", tiny_data)
    assert ds[0][0].shape == (3, 224, 224)
    spec = DATASETS.get("tinyimagenet")
    clf = create_classifier(
        spec.prompt_classnames(ds.data.classnames), list(spec.templates), ModelSpec("zsbench-tiny", "random"),
        cache_dir=tmp_path,
    )  # fmt: skip
    sub = select_subset(len(ds), 8, seed=0)
    res = evaluate(clf, ds, [Threat("pgd", "linf", 1 / 255, steps=1, step_size=1 / 255)], subset=sub, progress=False)
    assert res.n == 8 and 0.0 <= res.accuracy() <= 1.0
    std = load_dataset("tinyimagenet", tiny_data, preprocess="standard", model=ModelSpec("zsbench-tiny", "random"))
    assert std[0][0].shape == (3, 32, 32)
