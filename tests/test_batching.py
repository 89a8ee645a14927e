"""``--batch-size auto``: the probe keeps the largest power of two that fits, and leaves the model as it was."""

from __future__ import annotations

import pytest
import torch

from robustbench_zs.engine.batching import CPU_BATCH, attack_step_probe, auto_batch_size, largest_fitting
from robustbench_zs.models import HeadKnobs, ModelSpec, ZeroShotClassifier, load_model


def _memory(capacity: int):
    """A stand-in for a GPU that holds ``capacity`` images: larger batches raise CUDA's out-of-memory error."""
    tried: list[int] = []

    def fits(b: int) -> None:
        tried.append(b)
        if b > capacity:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {b} images")

    return fits, tried


def test_largest_power_of_two_that_fits() -> None:
    fits, tried = _memory(700)
    assert largest_fitting(fits, start=32, limit=4096) == 512
    assert tried == [32, 64, 128, 256, 512, 1024]  # stops at the first that does not fit
    fits, tried = _memory(10**6)
    assert largest_fitting(fits, start=32, limit=256) == 256 and tried[-1] == 256


def test_start_too_large_halves_down() -> None:
    fits, _ = _memory(20)
    assert largest_fitting(fits, start=32) == 16
    fits, _ = _memory(0)
    with pytest.raises(RuntimeError, match="not even one image"):
        largest_fitting(fits, start=4)


def test_other_errors_are_not_taken_for_memory() -> None:
    def broken(b: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        largest_fitting(broken)


def test_probe_runs_an_attack_step_and_restores_the_model() -> None:
    loaded = load_model(ModelSpec("zsbench-tiny", "random", init_seed=0), torch.device("cpu"))
    head = torch.nn.functional.normalize(torch.randn(5, loaded.model.visual.output_dim), dim=-1)
    clf = ZeroShotClassifier.from_model(loaded.model, head, loaded.image_size, HeadKnobs()).train()
    flags = [p.requires_grad for p in clf.parameters()]
    attack_step_probe(clf, (3, 32, 32), torch.device("cpu"))(8)
    assert clf.training and [p.requires_grad for p in clf.parameters()] == flags
    assert all(p.grad is None for p in clf.parameters())
    assert auto_batch_size(clf, (3, 32, 32), torch.device("cpu")) == CPU_BATCH


def test_auto_batch_size_through_zsbench_run(tmp_path, capsys, monkeypatch) -> None:
    """``--batch-size auto`` picks the probe's size, records it as automatic, and gives the numbers of a fixed batch."""
    import json

    from robustbench_zs.cli import main
    from robustbench_zs.engine import runner

    monkeypatch.setattr(runner, "auto_batch_size", lambda clf, shape, device: 8)  # as a small GPU would answer
    base = ["run", "--datasets", "synthetic", "--n", "24", "--attack", "pgd", "--steps", "2", "--eps", "4"]
    base += ["--arch", "zsbench-tiny", "--pretrained", "random", "--device", "cpu", "--no-progress"]
    assert main([*base, "--batch-size", "auto", "--out", str(tmp_path / "a")]) == 0
    assert "--batch-size auto: 8 for synthetic at 32x32 px" in capsys.readouterr().out
    assert main([*base, "--batch-size", "24", "--out", str(tmp_path / "b")]) == 0

    def records(folder):
        return {p.name: json.loads(p.read_text()) for p in (folder / "records").rglob("*.json")}

    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 2  # same record keys: the batch size is not part of them
    for name in a:
        assert a[name]["run"]["batch_size"] == 8 and a[name]["run"]["batch_size_auto"] is True
        assert b[name]["run"]["batch_size"] == 24 and b[name]["run"]["batch_size_auto"] is False
        assert a[name]["result"] == b[name]["result"]
