"""Numeric precision of an attack's forward pass (``Threat.precision``).

``fp32``: autocast explicitly off, so an attack run inside a caller's autocast region still computes in fp32.
``bf16``: the model's forward runs under ``torch.autocast(dtype=torch.bfloat16)``; the attack loss must then be computed
from ``logits.float()`` with a per-sample (summed) reduction. bf16 has fp32's exponent range, so with summed losses the
input gradients do not underflow the way fp16 ones with a batch-mean loss do (PMG-AFT issue #1, protocol.md section 4).
``fp16``: float16 autocast, only to reproduce the official PMG-AFT/TeCoA attack (the ``paper`` profile): with a
batch-mean loss and no loss scaling its gradients underflow, so robust accuracy then depends on the batch size.
"""

from __future__ import annotations

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtype per precision (``None``: autocast off); its keys are ``PRECISIONS``."""


def attack_autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The autocast region an attack's forward runs in: off for ``fp32``, bfloat16 for ``bf16``, float16 for ``fp16``.

    Args:
        device: the device of the attacked images (its type picks the autocast backend).
        precision: one of ``PRECISIONS``.
    """
    if precision not in AUTOCAST_DTYPES:  # Threat validates against PRECISIONS; this guards direct callers
        raise ValueError(f"unknown attack precision {precision!r}; available: {', '.join(AUTOCAST_DTYPES)}")
    device_type = torch.device(device).type
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=dtype)
