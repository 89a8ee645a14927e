"""What ``zsbench bench`` measures with: the machine, timers that wait for the device, FLOP counts, the matmul peak.

Times are wall-clock seconds around work that is complete when the timer stops (on a GPU the stream is
synchronized before and after). FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: matrix
products, convolutions and attention only, two FLOPs per multiply-add, forward and backward. PyTorch's table lacks
two kernels these models run on the CPU, so they are added here (:data:`EXTRA_FLOP_FORMULAS`): the CPU flash
attention behind ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``'s inference fast path
(``torch._native_multi_head_attention``, taken under ``no_grad`` in eval mode); without them a ViT forward under
``no_grad`` counts a third fewer FLOPs than the same forward with gradients.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

try:  # PyTorch's own attention formulas, reused for the kernels its table misses
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count
except ImportError:  # pragma: no cover - older torch
    sdpa_flop_count = sdpa_backward_flop_count = None

aten = torch.ops.aten


def _attention_flops(q: tuple, k: tuple, v: tuple) -> int:
    """(B, H, L, E) query, (B, H, S, E) key, (B, H, S, Ev) value: Q K^T and P V, 2 FLOPs per multiply-add."""
    if sdpa_flop_count is not None:
        return sdpa_flop_count(q, k, v)
    b, h, s_q, d = q
    return 2 * b * h * s_q * k[2] * d + 2 * b * h * s_q * k[2] * v[3]


def _cpu_flash_attention_flop(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(q, k, v)


def _cpu_flash_attention_backward_flop(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    if sdpa_backward_flop_count is not None:
        return sdpa_backward_flop_count(grad_out, q, k, v)
    return 2 * _attention_flops(q, k, v) + _attention_flops(q, k, v) // 2  # pragma: no cover


def _native_mha_flop(query, key, value, embed_dim, num_heads, qkv_weight, *args, out_shape=None, **kwargs) -> int:
    """Self-attention of ``nn.MultiheadAttention``'s fast path: input projection, attention, output projection."""
    if len(query) == 2:  # unbatched (L, E)
        query, key = (1, *query), (1, *key)
    b, length, e = query
    s = key[1]
    head_dim = e // num_heads
    projections = 2 * b * length * e * qkv_weight[0] + 2 * b * length * e * e
    shape = (b, num_heads, length, head_dim)
    return projections + _attention_flops(shape, (b, num_heads, s, head_dim), (b, num_heads, s, head_dim))


#: FLOP formulas for kernels missing from PyTorch's table (see the module docstring).
EXTRA_FLOP_FORMULAS: dict = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward_flop,
    aten._native_multi_head_attention: _native_mha_flop,
}


def count_flops(fn: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """Run ``fn`` once under a FLOP counter; returns the total and the count per operator."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        fn()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, with the device idle before and done after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def summarize(seconds: list[float]) -> dict:
    """The timings of repeated runs: all of them, their median (the figure reported) and the fastest."""
    return {
        "seconds": [round(s, 4) for s in seconds],
        "median_seconds": round(statistics.median(seconds), 4),
        "min_seconds": round(min(seconds), 4),
    }


class MatmulProbe:
    """The machine's dense matmul throughput in one dtype: FLOP/s of a large square ``torch.mm``.

    The side is found once: it starts at 256 and doubles while one product takes under ``target_s`` and the side
    is below ``max_size`` (8192 on the CPU, 16384 on a GPU), so a type without fast kernels (bf16 on most CPUs)
    is measured on a size that ends in time. Each :meth:`sample` warms up with one product, times ``repeats``
    products one by one and returns their median rate.
    """

    def __init__(
        self,
        device: torch.device,
        dtype: torch.dtype,
        max_size: int | None = None,
        repeats: int = 3,
        target_s: float = 0.5,
    ) -> None:
        self.device, self.dtype, self.repeats = device, dtype, repeats
        self.max_size = max_size or (16384 if device.type == "cuda" else 8192)
        self.target_s = target_s
        self.size: int | None = None

    def _operands(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(n)
        return tuple(torch.randn(n, n, generator=gen).to(self.device, self.dtype) for _ in range(2))  # type: ignore[return-value]

    def _find_size(self) -> int:
        n = min(256, self.max_size)
        while True:
            product = functools.partial(torch.mm, *self._operands(n))
            timed(product, self.device)  # the first product at a size selects kernels and fills caches
            if n * 2 > self.max_size or timed(product, self.device) >= self.target_s:
                return n
            n *= 2

    def sample(self) -> float:
        if self.size is None:
            self.size = self._find_size()
        n = self.size
        product = functools.partial(torch.mm, *self._operands(n))
        timed(product, self.device)
        rates = [2 * n**3 / timed(product, self.device) for _ in range(self.repeats)]
        return statistics.median(rates)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The vector extensions that decide the CPU's matmul speed (from /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                    return [x for x in wanted if x in flags]
    except OSError:
        pass
    return []


def describe_machine(device: torch.device) -> dict:
    """The hardware and software the figures were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    out = {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device": str(device),
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):
        out["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return out


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on a shared machine slows every figure)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None
