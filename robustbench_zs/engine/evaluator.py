"""Clean and robust zero-shot accuracy of a classifier on a dataset, with per-example correctness."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Subset as TorchSubset
from tqdm.auto import tqdm

from ..attacks import ATTACKS, Threat
from ..attacks.pgd import eval_mode_no_param_grad
from ..datasets.spec import ImageDataset
from ..datasets.subset import Subset, select_subset

SEED_STRIDE = 1_000_003


@dataclass
class EvalResult:
    """Per-example outcomes in subset order.

    Attributes:
        indices: the evaluated image indices of the split.
        clean: correct on the clean image.
        robust: per threat, correct on the clean image and under the attack.
        seconds: wall time per threat slug (``clean`` included).
    """

    indices: np.ndarray
    clean: np.ndarray
    robust: dict[Threat, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.indices)

    def accuracy(self, threat: Threat | None = None) -> float:
        mask = self.clean if threat is None or threat.is_clean else self.robust[threat]
        return float(mask.mean()) if len(mask) else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    classifier: nn.Module,
    dataset: ImageDataset,
    threats: list[Threat] | tuple[Threat, ...] = (),
    *,
    subset: Subset | None = None,
    batch_size: int = 128,
    seed: int = 0,
    workers: int = 0,
    progress: bool | None = None,
    desc: str = "eval",
    clean: np.ndarray | None = None,
) -> EvalResult:
    """Evaluate ``classifier`` clean and under each threat.

    Args:
        classifier: maps images in [0, 1] (B, 3, H, W) to logits (B, C); its device is used.
        dataset: yields (uint8 image (3, H, W), label).
        threats: attacks to run (the clean evaluation always runs).
        subset: which images; the full split by default.
        seed: drives the attacks' random starts (per image, so results do not depend on batching).
        progress: show a progress bar (None: only on a terminal).
        clean: clean correctness of these images (subset order) from an earlier pass; skips the clean forward.
    """
    device = next(classifier.parameters()).device
    subset = subset or select_subset(len(dataset), None, seed)
    threats = [t for t in threats if not t.is_clean]
    loader = DataLoader(
        TorchSubset(dataset, subset.indices.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    idx = torch.as_tensor(subset.indices, dtype=torch.long)
    known = None if clean is None else torch.as_tensor(np.asarray(clean, dtype=bool))
    if known is not None and len(known) != subset.n:
        raise ValueError(f"clean has {len(known)} entries for {subset.n} images")
    clean_parts: list[torch.Tensor] = []
    robust_parts: dict[Threat, list[torch.Tensor]] = {t: [] for t in threats}
    seconds = {"clean": 0.0, **{t.slug: 0.0 for t in threats}}
    start = 0
    with eval_mode_no_param_grad(classifier):
        for images, labels in tqdm(loader, desc=desc, unit="batch", disable=None if progress is None else not progress):
            x = images.to(device, non_blocking=True).float().div_(255)
            y = labels.to(device, non_blocking=True)
            seeds = idx[start : start + len(y)] + seed * SEED_STRIDE
            if known is not None:
                correct = known[start : start + len(y)].to(device)
            else:
                t0 = time.perf_counter()
                with torch.no_grad():
                    correct = classifier(x).argmax(dim=1) == y
                _sync(device)
                seconds["clean"] += time.perf_counter() - t0
            start += len(y)
            clean_parts.append(correct.cpu())
            for t in threats:
                t0 = time.perf_counter()
                robust = ATTACKS.get(t.name).run(classifier, x, y, [t], seeds)[t]
                _sync(device)
                seconds[t.slug] += time.perf_counter() - t0
                robust_parts[t].append((robust & correct).cpu())
    clean_all = torch.cat(clean_parts).numpy() if clean_parts else np.zeros(0, dtype=bool)
    return EvalResult(
        indices=subset.indices,
        clean=clean_all,
        robust={t: torch.cat(p).numpy() for t, p in robust_parts.items()},
        seconds=seconds,
    )
