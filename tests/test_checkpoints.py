"""Checkpoints (ours and foreign image-encoder files) and the weight-interpolation method."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import robustbench_zs.methods.interpolation  # noqa: F401  (registers the method)
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.methods.base import METHODS
from robustbench_zs.methods.interpolation import InterpolationConfig, interpolate_state
from robustbench_zs.models import ModelSpec, load_model
from robustbench_zs.weights import (
    FORMAT,
    CorruptCheckpointError,
    apply_visual_state,
    check_complete,
    checkpoint_identity,
    load_checkpoint,
    load_state_file,
    load_visual_state,
    save_checkpoint,
)

ARCH = "zsbench-tiny"
LAYERS = 2  # zsbench-tiny's vision tower


def _fresh(seed: int):
    return load_model(ModelSpec(ARCH, "random", init_seed=seed)).model


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def _openai_visual_keys(layers: int) -> list[str]:
    """Parameter names of OpenAI CLIP's VisionTransformer (clip/model.py), written out by hand."""
    keys = ["class_embedding", "positional_embedding", "proj", "conv1.weight", "ln_pre.weight", "ln_pre.bias"]
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        keys += [
            b + "attn.in_proj_weight",
            b + "attn.in_proj_bias",
            b + "attn.out_proj.weight",
            b + "attn.out_proj.bias",
            b + "ln_1.weight",
            b + "ln_1.bias",
            b + "mlp.c_fc.weight",
            b + "mlp.c_fc.bias",
            b + "mlp.c_proj.weight",
            b + "mlp.c_proj.bias",
            b + "ln_2.weight",
            b + "ln_2.bias",
        ]
    return keys + ["ln_post.weight", "ln_post.bias"]


@pytest.fixture(scope="module")
def src():
    """The model whose weights the checkpoints hold (seed 5), and a batch of its outputs."""
    model = _fresh(5)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.visual(x)
    return model, x, out


def _outputs_after_loading(path, x) -> torch.Tensor:
    target = _fresh(0)
    state, _ = load_visual_state(path, ARCH)
    apply_visual_state(target, state, ARCH)
    with torch.no_grad():
        return target.visual(x)


# --- our checkpoints ------------------------------------------------------------------------------------------------


def test_round_trip_is_exact_and_hashed(src, tmp_path):
    model = src[0]
    state = model.visual.state_dict()
    folder = save_checkpoint(tmp_path / "ck", state, {"method": "tecoa", "arch": ARCH, "trains": "image_encoder"})
    assert folder == tmp_path / "ck"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "weights.safetensors"]  # no temp files left
    meta_on_disk = json.loads((folder / "meta.json").read_text())
    digest = hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest()
    assert (
        meta_on_disk["weights_sha256"] == digest and meta_on_disk["format"] == FORMAT == "robustbench_zs-checkpoint-1"
    )
    for path in (folder, folder / "weights.safetensors"):
        tensors, meta = load_checkpoint(path)
        assert meta["method"] == "tecoa" and meta["weights_sha256"] == digest
        assert set(tensors) == set(state)
        assert all(torch.equal(tensors[k], state[k]) and tensors[k].dtype == state[k].dtype for k in state)
    assert checkpoint_identity(folder) == checkpoint_identity(folder / "weights.safetensors") == f"sha256:{digest}"
    assert torch.equal(_outputs_after_loading(folder, src[1]), src[2])


def test_the_same_weights_saved_twice_have_the_same_hash(tmp_path):
    """The weights file's sha256 is the checkpoint's identity in every record: two identical trainings must give
    the same one. safetensors writes its metadata keys in a random order, so the file holds one key. (Eight saves:
    with two keys, all eight would agree by chance once in 128 runs.)"""
    tensors = {"w": torch.arange(12.0).view(3, 4), "b": torch.ones(3)}
    digests = {
        save_checkpoint(tmp_path / str(i), tensors, {"step": 1}) and checkpoint_identity(tmp_path / str(i))
        for i in range(8)
    }
    assert len(digests) == 1, digests


def test_resave_replaces_and_shared_storage_is_saved(tmp_path):
    base = torch.arange(6.0)
    save_checkpoint(tmp_path, {"a": torch.zeros(2)}, {"step": 1})
    save_checkpoint(tmp_path, {"a": base, "b": base.view(2, 3)}, {"step": 2, "format": "overridden"})
    tensors, meta = load_checkpoint(tmp_path)
    assert meta["step"] == 2 and meta["format"] == FORMAT
    assert torch.equal(tensors["a"], base) and torch.equal(tensors["b"], base.view(2, 3))


def test_modified_weights_fail_the_sha_check(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.ones(64)}, {})
    f = tmp_path / "weights.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # same size, one byte of tensor data changed
    f.write_bytes(bytes(data))
    with pytest.raises(ZSBenchError) as e:
        load_checkpoint(tmp_path)
    msg = _one_line(e)
    assert str(f) in msg and "sha256" in msg and "copy" in msg


def test_truncated_weights_are_one_line(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.ones(64)}, {})
    f = tmp_path / "weights.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ZSBenchError) as e:
        load_checkpoint(tmp_path)
    msg = _one_line(e)
    assert str(f) in msg and "truncated" in msg
    with pytest.raises(ZSBenchError) as e:
        load_visual_state(tmp_path, ARCH)
    assert "truncated" in _one_line(e)


def test_not_our_folder_and_prompt_checkpoints(tmp_path):
    with pytest.raises(ZSBenchError) as e:
        load_checkpoint(tmp_path)
    assert "meta.json" in _one_line(e)
    save_checkpoint(tmp_path / "vp", {"prompt": torch.zeros(3)}, {"method": "vp_tecoa", "trains": "prompts"})
    with pytest.raises(ZSBenchError) as e:
        load_visual_state(tmp_path / "vp", ARCH)
    assert "trains prompts" in _one_line(e)
    save_checkpoint(tmp_path / "other", {"prompt": torch.zeros(3)}, {"arch": "ViT-B-32", "trains": "image_encoder"})
    with pytest.raises(ZSBenchError) as e:
        load_visual_state(tmp_path / "other", ARCH)
    assert "--arch ViT-B-32" in _one_line(e)


# --- foreign files --------------------------------------------------------------------------------------------------


def _official_file(model) -> dict:
    """What PMG-AFT's / TeCoA's training script saves (save_checkpoint in PMG_AFT.py)."""
    own = model.visual.state_dict()
    visual = {k: own[k].clone() for k in _openai_visual_keys(LAYERS)}  # OpenAI key names
    n = len(visual)
    return {
        "epoch": 3,
        "state_dict": {},  # NullPrompter
        "add_prompter": {},
        "vision_encoder_state_dict": visual,
        "best_acc1": np.float64(31.95),  # np.mean of the validation accuracies
        "optimizer": {
            "state": {i: {"momentum_buffer": torch.zeros(1)} for i in range(n)},
            "param_groups": [
                {
                    "lr": np.float64(2.5e-5),
                    "momentum": 0.9,
                    "dampening": 0,
                    "weight_decay": 0,
                    "nesterov": False,
                    "params": list(range(n)),
                }  # fmt: skip
            ],
        },
    }


def test_openai_key_names_are_open_clip_names(src):
    assert sorted(_openai_visual_keys(LAYERS)) == sorted(src[0].visual.state_dict())


def test_official_pmg_aft_file_gives_identical_outputs(src, tmp_path):
    path = tmp_path / "model_best.pth.tar"
    torch.save(_official_file(src[0]), path)
    state, info = load_visual_state(path, ARCH)
    assert info["format"] == "tecoa/pmg_aft" and info["epoch"] == 3 and info["best_acc1"] == pytest.approx(31.95)
    assert info["checkpoint"] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(_outputs_after_loading(path, src[1]), src[2])


def test_official_file_written_under_numpy_1(src, tmp_path):
    """numpy 1 pickles its scalars as numpy.core.multiarray.scalar (numpy 2: numpy._core...)."""
    path = tmp_path / "legacy.pth.tar"
    torch.save(_official_file(src[0]), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    if b"numpy._core.multiarray" in data:
        path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\nscalar" in path.read_bytes()
    assert torch.equal(_outputs_after_loading(path, src[1]), src[2])


def test_robustvlm_style_files(src, tmp_path):
    model = src[0]
    prefixed = tmp_path / "module.pt"  # saved from a DataParallel-wrapped tower
    torch.save({"module." + k: v for k, v in model.visual.state_dict().items()}, prefixed)
    state, info = load_visual_state(prefixed, ARCH)
    assert info["stripped_prefixes"] == ["module."] and info["format"] == "state_dict"
    assert torch.equal(_outputs_after_loading(prefixed, src[1]), src[2])

    whole = tmp_path / "open_clip_model.pt"  # a whole open_clip model: the text tower is left out
    torch.save(model.state_dict(), whole)
    state, info = load_visual_state(whole, ARCH)
    n_text = sum(not k.startswith("visual.") for k in model.state_dict())
    assert info["stripped_prefixes"] == ["visual."] and info["ignored_keys"] == n_text > 0
    assert torch.equal(_outputs_after_loading(whole, src[1]), src[2])

    plain = tmp_path / "visual.pt"
    torch.save(model.visual.state_dict(), plain)
    assert torch.equal(_outputs_after_loading(plain, src[1]), src[2])


def test_plain_safetensors_file(src, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "fare.safetensors"
    save_file({k: v.contiguous() for k, v in src[0].visual.state_dict().items()}, str(path))
    state, info = load_visual_state(path, ARCH)
    assert info["format"] == "safetensors"
    assert torch.equal(_outputs_after_loading(path, src[1]), src[2])


def test_another_architecture_is_one_line(src, tmp_path):
    target = _fresh(0)
    state = {k: v.clone() for k, v in src[0].visual.state_dict().items()}
    state["proj"] = torch.zeros(64, 16)
    del state["ln_post.bias"]
    state["transformer.resblocks.2.ln_1.weight"] = torch.ones(64)
    before = {k: v.clone() for k, v in target.visual.state_dict().items()}
    with pytest.raises(ZSBenchError) as e:
        apply_visual_state(target, state, ARCH)
    msg = _one_line(e)
    assert msg.startswith(f"checkpoint is for another architecture than {ARCH}")
    assert "1 missing keys e.g. ln_post.bias" in msg and "1 unexpected keys" in msg
    assert "shape mismatch at proj (checkpoint [64, 16] vs model [64, 32])" in msg
    assert all(torch.equal(before[k], v) for k, v in target.visual.state_dict().items())  # nothing loaded

    path = tmp_path / "other.pt"
    torch.save({"vision_encoder_state_dict": state, "epoch": 1}, path)
    loaded, _ = load_visual_state(path, ARCH)
    with pytest.raises(ZSBenchError, match="shape mismatch at proj"):
        apply_visual_state(target, loaded, ARCH)


class _Opaque:
    """An arbitrary object: unpickling it would import this test module."""

    def __init__(self):
        self.value = 3


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def test_pickles_that_need_code_are_refused(src, tmp_path):
    marker = tmp_path / "ran"
    for name, extra in (("code.pt", _RunsCode(str(marker))), ("object.pt", _Opaque())):
        path = tmp_path / name
        torch.save({"vision_encoder_state_dict": src[0].visual.state_dict(), "args": extra}, path)
        with pytest.raises(ZSBenchError) as e:
            load_visual_state(path, ARCH)
        msg = _one_line(e)
        assert msg.startswith(f"refusing {path}") and "arbitrary unpickling" in msg
    assert not marker.exists()


def test_truncated_or_missing_foreign_file(src, tmp_path):
    path = tmp_path / "model_best.pth.tar"
    torch.save(_official_file(src[0]), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ZSBenchError) as e:
        load_visual_state(path, ARCH)
    msg = _one_line(e)
    assert str(path) in msg and "truncated" in msg
    with pytest.raises(ZSBenchError, match="no such"):
        load_visual_state(tmp_path / "absent.pt", ARCH)
    torch.save({"epoch": 1, "best_acc1": 3.0}, path)
    with pytest.raises(ZSBenchError, match="no image-encoder weights found .*best_acc1, epoch"):
        load_visual_state(path, ARCH)


def test_nan_weights_are_refused(src, tmp_path):
    state = {k: v.clone() for k, v in src[0].visual.state_dict().items()}
    state["proj"][0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(ZSBenchError, match="proj holds NaN"):
        load_visual_state(path, ARCH)


# --- interpolation --------------------------------------------------------------------------------------------------


def _pair():
    g = torch.Generator().manual_seed(1)
    sd0 = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "n": torch.tensor(7)}
    sd1 = {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "n": torch.tensor(7)}
    return sd0, sd1


def test_interpolate_state_endpoints_exact_and_midpoint():
    sd0, sd1 = _pair()
    at0, at1 = interpolate_state(sd0, sd1, 0.0), interpolate_state(sd0, sd1, 1)
    for k in sd0:
        assert torch.equal(at0[k], sd0[k]) and torch.equal(at1[k], sd1[k])
        assert at0[k].data_ptr() != sd0[k].data_ptr()  # copies, not the endpoint tensors themselves
    for a in (0.3, 0.5):
        mixed = interpolate_state(sd0, sd1, a)
        for k in ("w", "b"):
            want = (1 - a) * sd0[k].double().numpy() + a * sd1[k].double().numpy()
            np.testing.assert_allclose(mixed[k].numpy(), want, rtol=1e-6, atol=1e-7)
        assert torch.equal(mixed["n"], sd0["n"])


def test_interpolate_state_mismatches_are_one_line():
    sd0, sd1 = _pair()
    with pytest.raises(ZSBenchError) as e:
        interpolate_state(sd0, {**sd1, "extra": torch.ones(1)}, 0.5)
    assert "1 only in theta1 (e.g. extra)" in _one_line(e)
    with pytest.raises(ZSBenchError) as e:
        interpolate_state(sd0, {k: v for k, v in sd1.items() if k != "b"}, 0.5)
    assert "1 only in theta0 (e.g. b)" in _one_line(e)
    with pytest.raises(ZSBenchError) as e:
        interpolate_state(sd0, {**sd1, "w": torch.ones(4, 3)}, 0.5)
    assert "w is [3, 4] in theta0, [4, 3] in theta1" in _one_line(e)
    with pytest.raises(ZSBenchError, match="non-floating buffer"):
        interpolate_state(sd0, {**sd1, "n": torch.tensor(8)}, 0.5)
    counters = interpolate_state(
        {"bn.num_batches_tracked": torch.tensor(0)}, {"bn.num_batches_tracked": torch.tensor(9)}, 0.5
    )
    assert counters["bn.num_batches_tracked"].item() == 0
    with pytest.raises(ZSBenchError, match=r"\[0, 1\]"):
        interpolate_state(sd0, sd1, 1.5)


def test_interpolation_config_validation():
    cls = METHODS.get("interpolation")
    assert cls.Config is InterpolationConfig and cls.trains == "nothing"
    with pytest.raises(ZSBenchError, match="theta1"):
        cls()
    with pytest.raises(ZSBenchError, match=r"\[0, 1\]"):
        InterpolationConfig.from_overrides({"theta1": "x", "alpha": "1.5"})
    cfg = InterpolationConfig.from_overrides({"theta1": "ft", "alpha": "0.25"})
    assert cfg.alpha == 0.25 and cfg.theta0 == "pretrained"


def test_interpolation_build_encoder(src, tmp_path):
    folder = save_checkpoint(
        tmp_path / "ft", src[0].visual.state_dict(), {"method": "tecoa", "arch": ARCH, "trains": "image_encoder"}
    )
    x = src[1]
    pretrained = _fresh(0)
    with torch.no_grad():
        theta0_out = pretrained.visual(x)
    cls = METHODS.get("interpolation")
    outs = {}
    for alpha in (0.0, 0.5, 1.0):
        method = cls(InterpolationConfig(theta1=str(folder), alpha=alpha))
        model = _fresh(0)
        method.check_model(model, ARCH)
        encoder = method.build_encoder(model)
        assert encoder is model.visual
        with torch.no_grad():
            outs[alpha] = encoder(x)
        ident = method.identity()
        assert ident["theta0"] == {"source": "pretrained"}
        assert ident["theta1"]["checkpoint"] == checkpoint_identity(folder)
        with pytest.raises(ZSBenchError, match="already interpolated"):
            method.build_encoder(model)
    assert torch.equal(outs[0.0], theta0_out)
    assert torch.equal(outs[1.0], src[2])
    assert not torch.allclose(outs[0.5], theta0_out) and not torch.allclose(outs[0.5], src[2])

    # theta0 from a file too (the official format), theta1 the same folder: alpha 0 is the file's encoder
    official = tmp_path / "official.pth.tar"
    torch.save(_official_file(_fresh(9)), official)
    method = cls(InterpolationConfig(theta0=str(official), theta1=str(folder), alpha=0.0))
    with torch.no_grad():
        got = method.build_encoder(_fresh(0))(x)
        want = _fresh(9).visual(x)
    assert torch.equal(got, want)


def test_find_checkpoints_matches_training_dataset_config_and_recipe(tmp_path):
    import json as _json

    from robustbench_zs.engine.variants import find_checkpoints
    from robustbench_zs.methods import METHODS
    from robustbench_zs.models import ModelSpec

    spec = ModelSpec("zsbench-tiny", "random")
    cls = METHODS.get("pmg_aft")
    full = cls.Config.from_overrides({}).to_dict()
    no_beta = cls.Config.from_overrides({"beta": "0"}).to_dict()

    def ckpt(name, train, config, eps, created):
        folder = tmp_path / name
        folder.mkdir()
        meta = {
            "method": "pmg_aft",
            "complete": True,
            "arch": spec.arch,
            "pretrained": spec.pretrained,
            "train_dataset": train,
            "config": config,
            "recipe": {"train_eps_255": eps},
            "created_utc": created,
        }
        (folder / "meta.json").write_text(_json.dumps(meta))
        return folder

    a = ckpt("a", "tinyimagenet", full, 1.0, "2026-01-01")
    b = ckpt("b", "cifar100", full, 1.0, "2026-01-02")
    c = ckpt("c", "tinyimagenet", no_beta, 1.0, "2026-01-03")
    d = ckpt("d", "tinyimagenet", full, 4.0, "2026-01-04")
    assert find_checkpoints(tmp_path, "pmg_aft", spec) == [d, c, b, a]  # no constraint: newest first
    assert find_checkpoints(tmp_path, "pmg_aft", spec, train_dataset="tinyimagenet", config=full) == [d, a]
    assert find_checkpoints(tmp_path, "pmg_aft", spec, config=no_beta) == [c]  # never a beta = 1 checkpoint
    assert find_checkpoints(tmp_path, "pmg_aft", spec, config=full, recipe={"train_eps_255": 1.0}) == [b, a]
    assert find_checkpoints(tmp_path, "pmg_aft", spec, train_dataset="cifar10") == []


# --- whole files: complete or cut short, and full disks ----------------------------------------------------------


def _state(src) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in src[0].visual.state_dict().items()}


def test_check_complete_tells_whole_files_from_cut_ones(src, tmp_path):
    state = _state(src)
    files = {"zip": tmp_path / "w.pt", "safetensors": tmp_path / "w.bin", "pickle": tmp_path / "legacy.pt"}
    torch.save(state, files["zip"])
    save_file(state, str(files["safetensors"]))
    torch.save(state, files["pickle"], _use_new_zipfile_serialization=False)
    for fmt, path in files.items():
        assert check_complete(path) == fmt
        cut = tmp_path / f"cut-{path.name}"
        data = path.read_bytes()
        cut.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
            check_complete(cut)
    # a payload pickle is whole (its bytes are all there): refusing it is the loader's job, and nothing runs here
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"x": _RunsCode(str(marker))}, tmp_path / "evil.pt")
    assert check_complete(tmp_path / "evil.pt") == "zip" and not marker.exists()
    (tmp_path / "page.bin").write_bytes(b'\xef\xbb\xbf<?xml version="1.0"?><Error>AccessDenied</Error>')
    with pytest.raises(ZSBenchError, match="web page"):
        check_complete(tmp_path / "page.bin")


def test_load_state_file_understands_open_clip_layouts(src, tmp_path):
    state = _state(src)
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "epoch_1.pt")
    loaded, info = load_state_file(tmp_path / "epoch_1.pt")
    assert info["stripped_prefixes"] == ["module."] and info["format"] == "state_dict[state_dict]"
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(src, tmp_path, monkeypatch):
    import safetensors
    import safetensors.torch

    def no_space(tensors, filename, metadata=None):  # what safetensors raises on a full disk
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(ZSBenchError) as err:
        save_checkpoint(tmp_path / "ck", _state(src), {"method": "x"})
    assert _one_line(err).startswith("no space left on device while writing") and "free space" in str(err.value)
    assert not list((tmp_path / "ck").iterdir()), "the temporary weights file is removed"
