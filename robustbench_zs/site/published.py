"""Published numbers, entered as reported by their papers and never re-evaluated here (:data:`PUBLISHED`).

Each :class:`PublishedRow` is one model as one source reports it: its clean average and its robust averages per
attack and radius, under that source's own protocol. ``by_authors`` says whether the source is the method's own
paper (a re-run by other authors is an external evaluation). The site shows them apart from our evaluations and
uses them for the *best known* robust accuracy of a model: the lowest any evaluation found.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..resources import read_bytes

DATA = Path(__file__).with_name("published.json")


@dataclass(frozen=True)
class PublishedRow:
    source: str  # the source's id
    source_title: str
    venue: str
    url: str
    where: str
    method: str | None  # our registry id, None for a method we do not have
    label: str
    arch: str
    training_data: str
    variant: str
    by_authors: bool
    clean: float | None
    #: attack id -> {eps_255: average robust accuracy (%)}
    robust: dict[str, dict[float, float]]
    attacks: dict[str, str]
    #: per-dataset numbers where the source gives them: metric ("clean" or an attack id) -> {dataset: value}
    per_dataset: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def model_key(self) -> tuple:
        """What identifies one set of weights across sources (method, architecture, training data, variant)."""
        return (self.method, self.arch, self.training_data, self.variant)


def _paper_rows(src: dict, common: dict) -> list[PublishedRow]:
    text = read_bytes("robustbench_zs.paper", "data/paper_tables.csv").decode("utf-8")
    values: dict[tuple[str, str], dict[str, float]] = {}
    labels: dict[str, str] = {}
    for row in csv.DictReader(text.splitlines()):
        for metric, table in src["paper_tables"].items():
            if row["table"] == table and row["metric"] in ("clean", "robust") and not row["variant"]:
                values.setdefault((row["method"], metric), {})[row["dataset"]] = float(row["value"])
                labels.setdefault(row["method"], row["paper_label"])
    out = []
    for method in dict.fromkeys(m for m, _ in values):
        per = {metric: v for (m, metric), v in values.items() if m == method}
        robust = {a: {1.0: per[a]["Average"]} for a in src["attacks"] if a in per}
        out.append(
            PublishedRow(
                **common,
                method=method,
                label=labels[method],
                training_data="none" if method == "clip" else src["training_data"],
                variant="",
                by_authors=method in src["authors_of"],
                clean=per.get("clean", {}).get("Average"),
                robust=robust,
                per_dataset={k: {d: x for d, x in v.items() if d != "Average"} for k, v in per.items()},
            )
        )
    return out


@cache
def published() -> tuple[PublishedRow, ...]:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    rows: list[PublishedRow] = []
    for src in data["sources"]:
        common = {
            "source": src["id"],
            "source_title": src["title"],
            "venue": src["venue"],
            "url": src["url"],
            "where": src["where"],
            "arch": src["arch"],
            "attacks": src["attacks"],
        }
        if "paper_tables" in src:
            rows += _paper_rows(src, common)
            continue
        for r in src["rows"]:
            rows.append(
                PublishedRow(
                    **common,
                    method=r["method"],
                    label=r["label"],
                    training_data=r.get("training_data", src["training_data"]),
                    variant=r.get("variant", ""),
                    by_authors=r["method"] in src["authors_of"],
                    clean=r["clean"],
                    robust={a: {float(e): float(v) for e, v in by_eps.items()} for a, by_eps in r["robust"].items()},
                )
            )
    return tuple(rows)


def about() -> str:
    return json.loads(DATA.read_text(encoding="utf-8"))["about"]


def sources() -> list[dict]:
    return json.loads(DATA.read_text(encoding="utf-8"))["sources"]


@dataclass(frozen=True)
class BestKnown:
    value: float
    source: str  # a source's title, or "this site"
    attack: str
    external: bool  # found by someone else than the method's authors


def best_known_published(model_key: tuple, eps_255: float) -> list[BestKnown]:
    """Every published robust average of one model at one radius, lowest first."""
    out = []
    for r in published():
        if r.model_key != model_key or r.method is None:
            continue
        for attack, by_eps in r.robust.items():
            if eps_255 in by_eps:
                out.append(BestKnown(by_eps[eps_255], f"{r.venue}: {r.where}", r.attacks[attack], not r.by_authors))
    return sorted(out, key=lambda b: b.value)
