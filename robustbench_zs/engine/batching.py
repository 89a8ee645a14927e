"""``--batch-size auto``: the largest evaluation batch that fits the GPU.

Results do not depend on the batch size (every attack seeds its random numbers per image, tested at 16 and 64),
so the batch is free to follow the hardware. On a GPU the probe doubles the batch from ``start`` while one attack
step (a forward and a backward to the input, the largest graph an attack holds) fits in memory, and keeps the
last power of two that fitted: the next one did not, so the one kept leaves roughly half the memory free for the
longer attacks (APGD-T's targets, Square's queries) and for fragmentation. On the CPU memory is rarely the limit
and larger batches do not run faster, so ``auto`` is :data:`CPU_BATCH`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..attacks.core import eval_mode_no_param_grad

#: ``auto`` on the CPU.
CPU_BATCH = 128


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def largest_fitting(fits: Callable[[int], None], start: int = 32, limit: int = 4096) -> int:
    """The largest power of two from ``start`` to ``limit`` for which ``fits(b)`` runs without running out of memory.

    ``fits(b)`` raises ``torch.cuda.OutOfMemoryError`` (or a RuntimeError saying "out of memory") when ``b`` does
    not fit; any other error propagates. When even ``start`` does not fit, halves down to 1 before giving up.
    """
    best = None
    b = start
    while b <= limit:
        try:
            fits(b)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not _is_out_of_memory(e):
                raise
            break
        best = b
        b *= 2
    if best is not None:
        return best
    b = start // 2
    while b >= 1:
        try:
            fits(b)
            return b
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not _is_out_of_memory(e):
                raise
        b //= 2
    raise RuntimeError("not even one image fits in memory for an attack step")


def attack_step_probe(classifier: nn.Module, image_shape: tuple[int, int, int], device: torch.device):
    """``fits(b)`` for :func:`largest_fitting`: one forward and input-gradient backward of ``b`` random images."""

    def fits(b: int) -> None:
        x = y = loss = None
        try:
            x = torch.rand(b, *image_shape, device=device, requires_grad=True)
            with eval_mode_no_param_grad(classifier):
                logits = classifier(x)
                y = torch.zeros(b, dtype=torch.long, device=device)
                loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum")
                torch.autograd.grad(loss, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            del x, y, loss
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return fits


def auto_batch_size(
    classifier: nn.Module, image_shape: tuple[int, int, int], device: torch.device, limit: int = 4096
) -> int:
    """The evaluation batch ``--batch-size auto`` picks for ``classifier`` on images of ``image_shape`` (C, H, W)."""
    if device.type != "cuda":
        return CPU_BATCH
    return largest_fitting(attack_step_probe(classifier, image_shape, device), limit=limit)
