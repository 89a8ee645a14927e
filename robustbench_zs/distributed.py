"""Several processes over torch.distributed, started with ``torchrun`` (NCCL on GPUs, gloo on the CPU).

Training: every process takes an equal share of each global batch; after backward the gradients are summed across
processes (each process scaled its loss by its share of the global batch), so the update equals the one a single
process computes on the whole global batch, whatever the number of processes.

Evaluation: the batches of each record are handed out in turn, each process attacks its own, and the per-image
results are gathered into every process (:func:`gather_objects`); process 0 writes the records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import ZSBenchError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """False in every process of a torchrun job but process 0 (which prints and writes for the job)."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(name: str) -> torch.device:
    """``--device``: cpu, cuda, cuda:N or auto (a GPU when torch sees one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ZSBenchError(f"--device {name}: no CUDA GPU is visible to torch; use --device cpu")
        try:
            return torch.device(name)
        except RuntimeError:
            raise ZSBenchError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if name == "cpu":
        return torch.device("cpu")
    raise ZSBenchError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")


def setup(device_name: str = "auto") -> DistEnv:
    """This process's place in the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK), or one
    process alone without one, on its device: under torchrun a GPU job's process takes GPU ``LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if world > 1 or device.index is None:
            device = torch.device(f"cuda:{local if world > 1 else 0}")
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world, local, device)


def sum_gradients(params: list[nn.Parameter], env: DistEnv) -> None:
    """All-reduce (sum) the gradients of ``params`` in one flat buffer."""
    if not env.distributed:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        numel = g.numel()
        p.grad = flat[offset : offset + numel].view_as(p).clone()
        offset += numel


def sum_scalar(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def gather_objects(obj: object, env: DistEnv) -> list:
    """``obj`` of every process, in rank order (picklable objects: a batch's per-image results)."""
    if not env.distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, env: DistEnv) -> object:
    """Process 0's ``obj`` in every process (what process 0 decided: which records exist, the batch size)."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
