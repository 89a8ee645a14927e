"""Records of a real run for ``zsbench submit`` and ``zsbench site`` tests (test_submit.py, test_site_browser.py):
clip and a tecoa checkpoint (the tiny model, weights perturbed) under the world protocol, and their submissions.
Built once per session by the ``site_world`` and ``site_submissions`` fixtures of conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from robustbench_zs.cli import main
from robustbench_zs.methods.base import METHODS
from robustbench_zs.models import ModelSpec, load_model
from robustbench_zs.weights import save_checkpoint

ARCH = "zsbench-tiny"
CARD = {
    "name": "TeCoA (tiny test)",
    "paper": "arXiv:2212.07016",
    "venue": "ICLR 2023",
    "code": "https://github.com/cvlab-columbia/ZSRobust4FoundationModel",
    "training_data": "world-train",
    "test_time_defense": False,
    "extra_data": "none",
}
CLIP_CARD = {**CARD, "name": "CLIP zero-shot", "training_data": "none", "code": None}


def make_world(root: Path) -> dict:
    model = load_model(ModelSpec(ARCH, "random")).model
    cls = METHODS.get("tecoa")
    method = cls(cls.Config())
    state = method.trained_state(method.build_encoder(model))
    g = torch.Generator().manual_seed(3)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    ck = save_checkpoint(root / "tecoa-ck", state, {"method": "tecoa", "arch": ARCH, "complete": True})
    results = root / "results"
    argv = ["run", "--preset", "world", "--arch", ARCH, "--pretrained", "random", "--methods", "clip,tecoa"]
    argv += ["--checkpoint", f"tecoa={ck}", "--out", str(results), "--no-progress"]
    assert main(argv) == 0
    cards = root / "cards"
    cards.mkdir()
    (cards / "tecoa.json").write_text(json.dumps(CARD))
    (cards / "clip.json").write_text(json.dumps(CLIP_CARD))
    return {"root": root, "results": results, "ck": ck, "cards": cards}


def submit_argv(world: dict, out: Path, method: str = "tecoa", *extra: str) -> list[str]:
    argv = ["submit", "--method", method, "--protocol", "world", "--card", str(world["cards"] / f"{method}.json")]
    argv += ["--results", str(world["results"]), "--out", str(out)]
    if method == "tecoa" and "--checkpoint-sha256" not in extra and "--checkpoint" not in extra:
        argv += ["--checkpoint", str(world["ck"])]
    if method == "tecoa" and "--checkpoint-url" not in extra:
        argv += ["--checkpoint-url", "https://example.org/tecoa-tiny.safetensors"]
    return argv + list(extra)


def make_submissions(world: dict, out: Path) -> Path:
    for method in ("tecoa", "clip"):
        assert main(submit_argv(world, out, method, "--archive")) == 0
    return out
