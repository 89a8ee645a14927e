"""Model loading (random, checkpoint file), weight hashes, and the classifier's resize / normalize / scale."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import robustbench_zs.models.loader as loader_mod
from robustbench_zs.errors import ZSBenchError
from robustbench_zs.models import NORMALIZATIONS, HeadKnobs, ModelSpec, ZeroShotClassifier, load_model
from robustbench_zs.provenance import sha256_file


def test_random_weights_are_seeded_and_hashed(tiny):
    again = load_model(ModelSpec("zsbench-tiny", "random", init_seed=0))
    other = load_model(ModelSpec("zsbench-tiny", "random", init_seed=1))
    assert again.weights_sha256 == tiny.weights_sha256 != other.weights_sha256
    assert tiny.checkpoint_sha256 is None and tiny.source == "random"
    assert tiny.image_size == (32, 32) and not tiny.model.training


def test_checkpoint_file_round_trip(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = load_model(ModelSpec("zsbench-tiny", str(path)))
    assert loaded.checkpoint_sha256 == sha256_file(path)
    assert loaded.weights_sha256 == tiny.weights_sha256
    assert loaded.source.startswith("file:") and loaded.provenance()["checkpoint_sha256"] == sha256_file(path)


def test_truncated_checkpoint_is_one_clear_error(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ZSBenchError, match="could not load"):
        load_model(ModelSpec("zsbench-tiny", str(path)))


def test_unknown_tag_and_arch():
    with pytest.raises(ZSBenchError, match="tags for ViT-B-32: .*openai"):
        load_model(ModelSpec("ViT-B-32", "no-such-tag"))
    with pytest.raises(ZSBenchError, match="unknown architecture"):
        load_model(ModelSpec("ViT-Nope", "random"))


def test_classifier_resizes_and_normalizes_inside_forward(tiny):
    mean, std = NORMALIZATIONS["imagenet"]
    head = F.normalize(torch.randn(5, 32), dim=-1)
    clf = ZeroShotClassifier(tiny.model.visual, head, tiny.image_size, mean, std, 1.0)
    x = torch.rand(2, 3, 64, 64)
    manual = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    manual = (manual - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.normalize(tiny.model.visual(manual), dim=-1) @ head.T
        torch.testing.assert_close(clf(x), expected)
        # at the native size nothing is resized
        x32 = torch.rand(2, 3, 32, 32)
        norm32 = (x32 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        torch.testing.assert_close(clf(x32), F.normalize(tiny.model.visual(norm32), dim=-1) @ head.T)
    # logits are cosines times the scale
    assert clf(x).abs().max() <= 1.0 + 1e-5


def test_logit_scale_knobs(tiny):
    assert HeadKnobs(logit_scale="100").resolve_logit_scale(tiny.model) == 100.0
    assert HeadKnobs(logit_scale="1").resolve_logit_scale(tiny.model) == 1.0
    learned = HeadKnobs(logit_scale="learned").resolve_logit_scale(tiny.model)
    assert learned == pytest.approx(tiny.model.logit_scale.exp().item())
    with pytest.raises(ZSBenchError, match="unknown normalization"):
        HeadKnobs(normalization="nope")
    with pytest.raises(ZSBenchError, match="unknown logit scale"):
        HeadKnobs(logit_scale="7")


def test_offline_tag_download_is_one_clear_error(monkeypatch):
    import open_clip

    def offline(*a, **k):
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    monkeypatch.setattr(loader_mod, "hub_reachable", lambda: True)  # the hub answered, then the download failed
    with pytest.raises(ZSBenchError, match="could not fetch the weights of ViT-B-32/openai.*--pretrained PATH"):
        load_model(ModelSpec("ViT-B-32", "openai"))


def test_without_network_the_cache_is_asked_once_and_the_error_comes_in_seconds(monkeypatch):
    """No network: the hub client works from the local cache only (no minute of retries), and a miss is one line
    naming --pretrained PATH and the zoo."""
    import huggingface_hub
    import open_clip

    asked = []

    def from_cache(cfg, cache_dir=None):
        asked.append(huggingface_hub.constants.is_offline_mode())
        if cfg.get("hf_hub", "").startswith("timm/vit_base_patch32"):
            return "/cached/open_clip_model.safetensors"
        raise FileNotFoundError("not in the local cache")

    monkeypatch.setattr(loader_mod, "hub_reachable", lambda: False)
    monkeypatch.setattr(open_clip, "download_pretrained", from_cache)
    _, cfg = loader_mod.resolve_spec(ModelSpec("ViT-B-32", "openai"))
    assert loader_mod._download(ModelSpec("ViT-B-32", "openai"), cfg, None) == "/cached/open_clip_model.safetensors"
    with pytest.raises(ZSBenchError) as err:
        load_model(ModelSpec("ViT-B-16", "openai"))
    assert asked == [True, True] and not huggingface_hub.constants.is_offline_mode()  # offline only for the lookup
    text = str(err.value)
    assert "no network" in text and "--pretrained PATH" in text and "zsbench models list" in text and "\n" not in text


def test_the_network_check_is_one_quick_connection(monkeypatch):
    import socket
    import time

    import huggingface_hub

    loader_mod.hub_reachable.cache_clear()
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    try:
        assert loader_mod.hub_reachable() is False
        assert time.perf_counter() - start < loader_mod.HUB_PROBE_S + 1
        calls = []
        monkeypatch.setattr(socket, "create_connection", lambda *a, **k: calls.append(a))
        assert loader_mod.hub_reachable() is False and calls == []  # asked once per process
        loader_mod.hub_reachable.cache_clear()
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        assert loader_mod.hub_reachable() is False and calls == []  # HF_HUB_OFFLINE: not even one connection
    finally:
        loader_mod.hub_reachable.cache_clear()


@pytest.mark.network
def test_vit_b32_openai_loads_with_its_learned_scale():
    loaded = load_model(ModelSpec("ViT-B-32", "openai"))
    assert loaded.image_size == (224, 224) and len(loaded.checkpoint_sha256) == 64
    assert HeadKnobs(logit_scale="learned").resolve_logit_scale(loaded.model) == pytest.approx(100.0)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"visual.conv1.weight": _Payload(marker)}, path)
    with pytest.raises(ZSBenchError, match="refusing .*arbitrary unpickling"):
        load_model(ModelSpec("zsbench-tiny", str(path)))
    assert not marker.exists()


def test_a_plain_pickle_payload_as_pretrained_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:  # a legacy pickle, not torch's zip archive
        pickle.dump({"visual.proj": _Payload(marker)}, f)
    with pytest.raises(ZSBenchError, match="refusing .*io.open.*arbitrary unpickling"):
        load_model(ModelSpec("zsbench-tiny", str(path)))
    assert not marker.exists()


def test_pretrained_files_are_read_by_our_safe_loader_not_open_clip(tiny, tmp_path, monkeypatch):
    """Whatever open_clip's version and its torch.load default: its loader is never used for a local file, and the
    only torch.load is weights_only=True."""
    import open_clip
    from open_clip import factory

    def not_this(*a, **k):
        raise AssertionError("open_clip's checkpoint loader was used")

    monkeypatch.setattr(factory, "load_checkpoint", not_this)
    monkeypatch.setattr(open_clip, "load_checkpoint", not_this, raising=False)
    real_load = torch.load
    weights_only = []

    def spy(*args, **kwargs):
        weights_only.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    assert load_model(ModelSpec("zsbench-tiny", str(path))).weights_sha256 == tiny.weights_sha256
    assert weights_only == [True]


def _layouts(tiny, tmp_path) -> dict[str, Path]:
    sd = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    files = {}
    files["torch.save"] = tmp_path / "plain.pt"
    torch.save(sd, files["torch.save"])
    files["open_clip training checkpoint"] = tmp_path / "epoch_3.pt"
    torch.save(
        {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "epoch_3.pt"
    )
    files["safetensors"] = tmp_path / "model.safetensors"
    save_file(sd, str(files["safetensors"]))
    files["safetensors without the suffix"] = tmp_path / "model.bin"
    save_file(sd, str(files["safetensors without the suffix"]))
    return files


def test_torch_save_and_safetensors_give_the_same_weights(tiny, tmp_path):
    for layout, path in _layouts(tiny, tmp_path).items():
        loaded = load_model(ModelSpec("zsbench-tiny", str(path)))
        assert loaded.weights_sha256 == tiny.weights_sha256, layout
        assert loaded.checkpoint_sha256 == sha256_file(path), layout


def test_a_pretrained_file_of_another_architecture_is_one_line(tmp_path):
    other = load_model(ModelSpec("zsbench-tiny-rn", "random")).model.state_dict()
    path = tmp_path / "rn.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    with pytest.raises(ZSBenchError, match="could not load .* into zsbench-tiny .*expected an open_clip checkpoint"):
        load_model(ModelSpec("zsbench-tiny", str(path)))
