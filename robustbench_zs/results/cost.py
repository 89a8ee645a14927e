"""What a record cost: the ``run.cost`` block ``zsbench run`` writes into every record, read back, summed and
formatted for the leaderboard (``--cost``), ``zsbench status`` and ``zsbench reproduce --dry-run``'s estimate.

The block (records written before issue 19 have none; nothing requires it):

- ``wall_s``: wall-clock seconds of the record's evaluation, from the start of its evaluation to its end, every
  attempt counted (a run killed and resumed from its progress file adds the seconds the killed attempts had saved);
  per attempt the slowest process's.
- ``attempts``: how many evaluations went into the record (1 unless it was resumed).
- ``device_type`` (``cuda``, ``cpu``, ...) and ``device``: the device's name (``NVIDIA H100 80GB HBM3``; on the CPU
  its model); ``processes``: torchrun's processes (1 without torchrun); ``gpus_per_process`` (accelerators) or
  ``threads_per_process`` (the CPU: torch's intra-op threads); ``device_count``: processes x GPUs each, or on the CPU
  processes x threads each (the cores used).
- ``process_s_summed``: every process's wall seconds added up over the processes and attempts.
- ``gpu_hours`` (accelerators) or ``cpu_core_hours`` (the CPU): summed over devices and attempts (each process's
  seconds times its GPUs, or its threads, / 3600). A record resumed on another kind of device holds both.
- ``images``: the record's images; ``images_per_s``: ``images / wall_s``.

The cost is how a record was computed, not what it measured: it never enters the record's key, so a record is
reused whatever its first computation cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields

#: Units of device time, by the record field that holds them.
UNITS = {"gpu_hours": "GPU-h", "cpu_core_hours": "CPU core-h"}


@dataclass(frozen=True)
class Spent:
    """Seconds spent on one record's evaluation so far (what a progress file carries from attempt to attempt).

    Attributes:
        wall_s: wall seconds (per attempt the slowest process's), summed over attempts.
        process_s: every process's wall seconds, summed over processes and attempts.
        gpu_s: GPU-seconds (each process's seconds times its GPUs); ``cpu_core_s``: CPU core-seconds (times its
            threads).
        attempts: evaluations counted.
    """

    wall_s: float = 0.0
    process_s: float = 0.0
    gpu_s: float = 0.0
    cpu_core_s: float = 0.0
    attempts: int = 0

    def __add__(self, other: Spent) -> Spent:
        return Spent(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Spent)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: object) -> Spent:
        """The seconds a progress file holds; anything unreadable counts as nothing spent (never an error)."""
        if not isinstance(obj, Mapping):
            return cls()
        values = {}
        for f in fields(cls):
            v = obj.get(f.name, 0)
            if not _number(v) or v < 0:
                return cls()
            values[f.name] = int(v) if f.name == "attempts" else float(v)
        return cls(**values)

    @classmethod
    def of_processes(cls, per_process: Iterable[tuple[str, float, int]]) -> Spent:
        """One attempt of ``(device type, wall seconds, GPUs or threads)`` per process."""
        per_process = list(per_process)
        if not per_process:
            return cls()
        return cls(
            wall_s=max(s for _, s, _ in per_process),
            process_s=sum(s for _, s, _ in per_process),
            gpu_s=sum(s * k for kind, s, k in per_process if kind != "cpu"),
            cpu_core_s=sum(s * k for kind, s, k in per_process if kind == "cpu"),
            attempts=1,
        )


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (hours of a tiny run stay readable, not 0)."""
    return float(f"{x:.{digits}g}")


def cost_block(spent: Spent, *, device_type: str, device: str, processes: int, per_process: int, images: int) -> dict:
    """The ``run.cost`` block of a record (see the module docstring).

    Args:
        spent: the seconds of every attempt (:class:`Spent`).
        device_type: ``cuda``, ``cpu``, ...; device: its name (the CPU's model on the CPU).
        processes: processes that computed the last attempt; per_process: GPUs each, or on the CPU torch's threads.
        images: the record's images.
    """
    cpu = device_type == "cpu"
    block: dict = {
        "wall_s": round(spent.wall_s, 3),
        "attempts": spent.attempts,
        "device_type": device_type,
        "device": device,
        "processes": processes,
        ("threads_per_process" if cpu else "gpus_per_process"): per_process,
        "device_count": processes * per_process,
        "process_s_summed": round(spent.process_s, 3),
    }
    if not cpu or spent.gpu_s > 0:
        block["gpu_hours"] = _sig(spent.gpu_s / 3600)
    if cpu or spent.cpu_core_s > 0:
        block["cpu_core_hours"] = _sig(spent.cpu_core_s / 3600)
    block["images"] = images
    block["images_per_s"] = _sig(images / spent.wall_s) if spent.wall_s > 0 else None
    return block


# ------------------------------------------------------------------------------------------------- reading back


def hardware_label(device_type: str, device: str, device_count: int, processes: int = 1) -> str:
    """``8× NVIDIA H100 80GB HBM3``; on the CPU ``AMD EPYC 7B13, 4 CPU threads`` (``2×2`` under torchrun)."""
    if device_type == "cpu":
        if processes > 1:
            return f"{device}, {processes}×{device_count // processes} CPU threads"
        return f"{device}, {device_count} CPU thread{'s' if device_count != 1 else ''}"
    return f"{device_count}× {device}"


def read_cost(record: object) -> tuple[dict | None, str | None]:
    """A record's cost, checked, as ``(cost, None)``; ``(None, why)`` where it has none or an unreadable one.

    ``record``: a :class:`~robustbench_zs.results.Record`, its JSON document, or the ``run`` block itself. Never
    raises: a record from before costs were recorded, or one whose block was edited into nonsense, gives None and
    the reason (``no cost block``, ``unreadable cost block: ...``).

    The cost is a dict with ``hours`` (unit -> device hours, units ``GPU-h`` and ``CPU core-h``), ``wall_s``,
    ``images``, ``images_per_s`` (None without a wall time), ``records`` (1), ``hardware`` (a one-label list, see
    :func:`hardware_label`), ``hardware_key`` (device type, name and count: what "the same hardware" means) and
    ``attempts``: the shape :func:`sum_costs` returns, so :func:`format_cost` formats either.
    """
    run = getattr(record, "run", None)
    if run is None and isinstance(record, Mapping):
        run = record.get("run", record if "cost" in record else None)
    if not isinstance(run, Mapping):
        return None, "no run block"
    if "cost" not in run:
        return None, "no cost block"
    block = run["cost"]
    if not isinstance(block, Mapping):
        return None, "unreadable cost block: not an object"
    for key, ok in (
        ("wall_s", lambda v: _number(v) and v >= 0),
        ("device_type", lambda v: isinstance(v, str) and v != ""),
        ("device", lambda v: isinstance(v, str) and v != ""),
        ("device_count", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
        ("images", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    ):
        if key not in block or not ok(block[key]):
            return None, f"unreadable cost block: {key} is missing or wrong"
    hours = {}
    for key, unit in UNITS.items():
        if key in block:
            if not _number(block[key]) or block[key] < 0:
                return None, f"unreadable cost block: {key} is not a number of hours"
            hours[unit] = float(block[key])
    if not hours:
        return None, "unreadable cost block: neither gpu_hours nor cpu_core_hours"
    processes = block.get("processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        processes = 1
    attempts = block.get("attempts", 1)
    wall = float(block["wall_s"])
    kind, device, count = block["device_type"], block["device"], block["device_count"]
    return {
        "hours": hours,
        "wall_s": wall,
        "images": block["images"],
        "images_per_s": block["images"] / wall if wall > 0 else None,
        "records": 1,
        "hardware": [hardware_label(kind, device, count, processes)],
        "hardware_key": (kind, device, count),
        "attempts": attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 1,
    }, None


def record_cost(record: object) -> dict | None:
    """A record's cost (:func:`read_cost`), or None where it has none or an unreadable one."""
    return read_cost(record)[0]


def sum_costs(costs: Iterable[dict]) -> dict | None:
    """The costs of several records added up: device hours per unit, wall seconds, images, every hardware label
    (more than one: the records were computed on different hardware); None for no costs."""
    costs = [c for c in costs if c is not None]
    if not costs:
        return None
    hours: dict[str, float] = {}
    for c in costs:
        for unit, h in c["hours"].items():
            hours[unit] = hours.get(unit, 0.0) + h
    wall = sum(c["wall_s"] for c in costs)
    images = sum(c["images"] for c in costs)
    keys = sorted({tuple(c["hardware_key"]) for c in costs})
    return {
        "hours": hours,
        "wall_s": wall,
        "images": images,
        "images_per_s": images / wall if wall > 0 else None,
        "records": sum(c.get("records", 1) for c in costs),
        "hardware": sorted({h for c in costs for h in c["hardware"]}),
        "hardware_key": keys[0] if len(keys) == 1 else None,
        "attempts": sum(c.get("attempts", 1) for c in costs),
    }


# ----------------------------------------------------------------------------------------------------- formatting


def format_hours(hours: float) -> str:
    """Three significant digits: ``1.89e-06``, ``0.000278``, ``0.05``, ``2.5``, ``123``; whole hours from 100 on
    (``1,234``)."""
    if hours >= 100:
        return f"{hours:,.0f}"
    return f"{hours:.3g}"


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``17 min``, ``3.5 h``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def format_device_hours(cost: dict) -> str:
    """``0.0123 GPU-h``; ``0.5 GPU-h + 0.01 CPU core-h`` where the records used both."""
    return " + ".join(f"{format_hours(h)} {unit}" for unit, h in sorted(cost["hours"].items()))


def format_cost(cost: dict | None, *, detail: bool = True) -> str:
    """One line for a cost (:func:`read_cost`'s or :func:`sum_costs`'s); ``—`` for None.

    ``0.0123 GPU-h on 1× NVIDIA H100 80GB HBM3, 44 s wall, 27 images at 0.61/s``; several hardware:
    ``0.52 GPU-h, mixed hardware (1× NVIDIA A100-SXM4-40GB; 8× NVIDIA H100 80GB HBM3), ...``. ``detail`` False:
    the device hours and the hardware only.
    """
    if cost is None:
        return "—"
    text = format_device_hours(cost)
    hw = cost["hardware"]
    text += f" on {hw[0]}" if len(hw) == 1 else f", mixed hardware ({'; '.join(hw)})"
    if detail:
        text += f", {format_duration(cost['wall_s'])} wall"
        ips = cost.get("images_per_s")
        text += f", {cost['images']:,} images" + (f" at {ips:.3g}/s" if ips else "")
    return text
