"""The protocols a submission is evaluated under, and which of a protocol's cells a record fills.

A protocol fixes the datasets, the images of each, the threats (clean, and the attack at each radius) and the tier;
a submission holds one record per (dataset, threat) of its protocol, nothing is ranked against a number measured
otherwise. Three protocols:

- ``gold``: the paper's 16 datasets, full test splits, clean and standard AutoAttack at eps 1/255 (the gold tier:
  ``zsbench run --tier gold``).
- ``fast``: the 16 datasets on the 1,000 shipped images each, clean and APGD-CE + APGD-T at eps 2/255 and 4/255 as
  RobustVLM evaluated (the fast tier: ``zsbench run --tier fast``).
- ``world``: the world model's 8 zero-shot tasks, 256 seeded images each, clean and PGD-10 at eps 1, 2 and 4 /255
  (``zsbench run --preset world``): the protocol on which numbers mean something on a CPU, for trying the flow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..datasets.tiers import FAST_DATASETS, TIER_LINES, tier_of
from ..errors import ZSBenchError
from ..results.record import Record
from ..world.tasks import TASKS


@dataclass(frozen=True)
class Cell:
    """One threat of a protocol: ``clean`` or an attack at one radius (in units of 1/255)."""

    attack: str
    eps_255: float | None = None
    steps: int | None = None

    @property
    def label(self) -> str:
        if self.attack == "clean":
            return "clean"
        steps = f"-{self.steps}" if self.steps else ""
        return f"{self.attack}{steps} eps {self.eps_255:g}/255"

    def matches(self, attack: Mapping) -> bool:
        """Whether a record's attack block is this threat (fp32, L-inf, the settings the protocol names)."""
        if attack.get("name") != self.attack:
            return False
        if self.attack == "clean":
            return True
        if str(attack.get("norm", "")).lower() != "linf" or attack.get("precision", "fp32") != "fp32":
            return False
        eps = attack.get("eps_255")
        if not isinstance(eps, int | float) or not math.isclose(float(eps), float(self.eps_255), abs_tol=1e-9):
            return False
        if self.steps is not None and attack.get("steps") != self.steps:
            return False
        return self.attack != "autoattack" or attack.get("version", "standard") == "standard"


@dataclass(frozen=True)
class SubmissionProtocol:
    """A protocol of submissions (see the module docstring)."""

    name: str
    title: str
    datasets: tuple[str, ...]
    cells: tuple[Cell, ...]
    #: the tier every record must belong to (``datasets.tiers.tier_of``); None: no tier (the world protocol)
    tier: str | None
    #: images per dataset where the protocol fixes a seeded subset (the world's 256), else None (the tier decides)
    n: int | None
    #: the command that evaluates a method under this protocol
    command: str
    description: str

    @property
    def eps_255(self) -> tuple[float, ...]:
        return tuple(c.eps_255 for c in self.cells if c.eps_255 is not None)

    @property
    def attack(self) -> str:
        return next(c.attack for c in self.cells if c.attack != "clean")

    def cell_of(self, record: Record) -> Cell | None:
        """The cell a record fills, or None (another dataset, attack, radius, image count or precision)."""
        if record.dataset.get("id") not in self.datasets:
            return None
        if self.n is not None and record.n != self.n:
            return None
        return next((c for c in self.cells if c.matches(record.attack)), None)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "tier": self.tier,
            "datasets": list(self.datasets),
            "threats": [c.label for c in self.cells],
            "images_per_dataset": self.n,
        }


def _world_tasks() -> tuple[str, ...]:
    return tuple(t for t in TASKS if t != "world-train")


PAPER_DATASETS = tuple(FAST_DATASETS)

PROTOCOLS: dict[str, SubmissionProtocol] = {
    "gold": SubmissionProtocol(
        name="gold",
        title="Gold tier: standard AutoAttack, full test splits",
        datasets=PAPER_DATASETS,
        cells=(Cell("clean"), Cell("autoattack", 1.0)),
        tier="gold",
        n=None,
        command="zsbench run --tier gold --methods METHOD",
        description=TIER_LINES["gold"] + ", at eps 1/255 (the PMG-AFT paper's radius), L-inf, fp32",
    ),
    "fast": SubmissionProtocol(
        name="fast",
        title="Fast tier: APGD-CE + APGD-T on 1,000 images per dataset",
        datasets=PAPER_DATASETS,
        cells=(Cell("clean"), Cell("apgd-ce+t", 2.0), Cell("apgd-ce+t", 4.0)),
        tier="fast",
        n=None,
        command="zsbench run --tier fast --methods METHOD",
        description=TIER_LINES["fast"] + ", at eps 2/255 and 4/255 (RobustVLM's radii), L-inf, fp32",
    ),
    "world": SubmissionProtocol(
        name="world",
        title="World model: PGD-10 on the 8 world tasks (a CPU-sized protocol)",
        datasets=(),  # filled below (the world's tasks are read lazily)
        cells=(Cell("clean"), Cell("pgd", 1.0, 10), Cell("pgd", 2.0, 10), Cell("pgd", 4.0, 10)),
        tier=None,
        n=256,
        command="zsbench run --preset world --methods METHOD",
        description="the world model's 8 zero-shot tasks, 256 seeded images each, clean and PGD-10 at eps 1, 2 and "
        "4 /255 (step 1/255 per the profile), L-inf, fp32: numbers that mean something on a CPU, not on real data",
    ),
}


def get_protocol(name: str) -> SubmissionProtocol:
    if name not in PROTOCOLS:
        raise ZSBenchError(f"unknown protocol {name!r}: choose one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    if not p.datasets:  # the world's tasks
        p = SubmissionProtocol(**{**p.__dict__, "datasets": _world_tasks()})
        PROTOCOLS[name] = p
    return p


def tier_fits(protocol: SubmissionProtocol, cell: Cell, record: Record) -> bool:
    """Whether a record's images and attack are of the protocol's tier: ``gold``'s clean cells on the full split, its
    robust cells gold (``datasets.tiers.tier_of``); every ``fast`` cell fast; the world's cells of no tier."""
    tier = tier_of(record.dataset, record.attack)
    if protocol.tier == "gold" and cell.attack == "clean":
        return tier is None and record.n == record.dataset.get("n_total")
    return tier == protocol.tier


def protocol_of(record: Record) -> tuple[SubmissionProtocol, Cell] | None:
    """The protocol and cell a record belongs to (its tier must be the protocol's), or None."""
    for name in PROTOCOLS:
        p = get_protocol(name)
        cell = p.cell_of(record)
        if cell is not None and tier_fits(p, cell, record):
            return p, cell
    return None
