"""``zsbench world pretrain``: a tiny CLIP trained contrastively from scratch on the world's image-caption pairs.

Every step draws a fresh batch of scenes in minimal pairs (``scenes.sample_pairs``: two scenes that differ on one
axis, so that colour and texture alone never tell a batch apart; never a held-out colour-shape pair) and one
caption per scene naming at least that axis, from a generator seeded by (seed, step), so the data never runs out
and never repeats; the model (``--arch zsbench-world``)
starts from a seeded initialization; optimizer AdamW with a linear warm-up and cosine decay; the symmetric InfoNCE
loss of CLIP with a learned temperature. In fp32 on one thread, the same command gives the same weights bit for bit
(the shipped weights' sha256 is in the zoo and is checked by ``zsbench world pretrain --check``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..errors import follow_umask, writing
from ..models import loader  # noqa: F401  (registers the package's model configs with open_clip)
from ..models.classifier import NORMALIZATIONS
from ..provenance import sha256_file
from ..world.scenes import captions, render, sample_pairs
from ..world.tokenizer import WorldTokenizer

ARCH = "zsbench-world"


@dataclass(frozen=True)
class PretrainConfig:
    """The pre-training recipe (its defaults made the shipped weights)."""

    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 200
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * cfg.lr


def batch(cfg: PretrainConfig, step: int, tokenizer: WorldTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (B, 3, 32, 32) in [0, 1] and tokenized captions of pre-training step ``step``."""
    rng = np.random.default_rng([cfg.seed, step])
    scenes, focus = sample_pairs(rng, cfg.batch_size // 2)
    images = torch.from_numpy(render(scenes)).float().div_(255)
    return images, tokenizer(captions(scenes, rng, focus))


def build_model(seed: int):
    torch.manual_seed(seed)
    return open_clip.create_model(ARCH, pretrained=None, device="cpu")


def pretrain(
    cfg: PretrainConfig,
    echo: Callable[[str], None] = print,
    evaluate: Callable[[torch.nn.Module, int], None] | None = None,
    eval_every: int = 0,
) -> torch.nn.Module:
    """Train the world CLIP; returns the model (fp32, eval mode). ``evaluate(model, step)`` runs every
    ``eval_every`` steps when given."""
    model = build_model(cfg.seed)
    tokenizer = WorldTokenizer()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS["clip"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    model.train()
    t0 = time.perf_counter()
    labels = torch.arange(cfg.batch_size)
    for step in range(cfg.steps):
        images, tokens = batch(cfg, step, tokenizer)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        img = F.normalize(model.encode_image((images - mean) / std), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == cfg.steps - 1:
            echo(f"step {step + 1}/{cfg.steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
        if evaluate is not None and eval_every and (step + 1) % eval_every == 0:
            model.eval()
            evaluate(model, step + 1)
            model.train()
    return model.eval()


def save_weights(model: torch.nn.Module, cfg: PretrainConfig, out) -> str:
    """Write the model's state dict as safetensors (atomically; its metadata: the architecture and the recipe) and
    return the file's sha256. Nothing time- or machine-dependent goes in, so equal weights give equal files."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in a random order, which would change the file's sha256
    meta = {
        "zsbench": json.dumps({"arch": ARCH, "format": "open_clip state dict", "recipe": cfg.to_dict()}, sort_keys=True)
    }
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with writing(out, cleanup=(tmp,)):
        save_file(tensors, str(tmp), metadata=meta)
        follow_umask(tmp)
        os.replace(tmp, out)
    return sha256_file(out)
