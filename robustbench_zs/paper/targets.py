"""The PMG-AFT paper's tables and figures as data: what each target is, the paper's numbers, and the paper cells
that look wrong.

Everything comes from package data (read through :mod:`robustbench_zs.resources`), so no number is retyped in code:

- ``data/paper_tables.csv``: every number of the paper's tables 1-13 (a copy of the spec's file: numbers are facts);
- ``data/tables.json``: each target's caption and source, attack, training set, columns and rows; a row names our
  method id and its option overrides (``METHOD.key=value``, recipe fields such as ``train_eps_255`` included) and
  the CSV rows that hold the paper's numbers. Rows whose settings the paper does not give (tables 10-11, rows 3-6)
  carry ``options: null`` and a reason: they show the paper's numbers and never one of ours.

Flags on paper cells are found by rule, over all tables at once, never from a list of known errors:

- *equal neighbours*: a value equal to its left neighbour in the same row (both at least 1%), the signature of a
  copied cell (table 2's PCAM column, protocol.md section 8);
- *average*: a row's Average further than rounding from the mean of its 16 values (then some cell is wrong);
- *cross-table*: the same cell (method, options, training set and eps, metric, test attack and eps, dataset)
  given different values in two tables (table 4's 32.04 against tables 1 and 10's 31.95).

This module needs neither torch nor the engine.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from itertools import pairwise

from ..errors import ZSBenchError
from ..resources import read_csv, read_json

#: Column dataset of a row's mean over the 16 datasets.
AVERAGE = "average"
#: The paper's spelling of that column in paper_tables.csv.
PAPER_AVERAGE = "Average"
#: Equal neighbours below this accuracy (%) are not flagged: near-zero values repeat naturally.
EQUAL_NEIGHBOUR_MIN = 1.0
#: An Average further than this from the mean of its row's values is flagged. With every value and the average
#: given to two decimals (some apparently truncated), honest rows stay within 0.015.
AVERAGE_TOLERANCE = 0.02
#: Train eps (1/255) of every row without a ``train_eps_255`` option: the paper's recipe (protocol.md section 3).
PAPER_TRAIN_EPS_255 = 1.0

#: A paper cell: (table, method, variant, eps_255, metric, paper dataset name).
PaperKey = tuple[str, str, str, float, str, str]


@dataclass(frozen=True)
class PaperDataset:
    """One of the 16 evaluation datasets: the paper's column name, our dataset id, its test images (protocol.md 5)."""

    paper: str
    id: str
    images: int


@dataclass(frozen=True)
class Column:
    """One column of a target: a metric (``clean`` or ``robust``) on a dataset id or on :data:`AVERAGE`."""

    metric: str
    dataset: str


@dataclass(frozen=True)
class PaperRef:
    """Which rows of paper_tables.csv hold a row's numbers: a table per metric, method, variant and eps."""

    tables: tuple[tuple[str, str], ...]  # (metric, table); metric "*" for every metric
    method: str
    variant: str
    eps_255: float

    def table_for(self, metric: str) -> str | None:
        by_metric = dict(self.tables)
        return by_metric.get(metric, by_metric.get("*"))

    def key(self, metric: str, paper_dataset: str) -> PaperKey | None:
        table = self.table_for(metric)
        if table is None:
            return None
        return (table, self.method, self.variant, self.eps_255, metric, paper_dataset)


@dataclass(frozen=True)
class Row:
    """One row of a target.

    Attributes:
        key: unique within the target.
        label: the row's name in our output (the paper's, with the lost Greek letters spelled out).
        method: our method id.
        options: ``(key, value)`` overrides of the method's config and recipe, as ``--set METHOD.key=value`` takes
            them; ``None`` where the paper does not give the settings (then ``not_reproducible`` says why).
        eps_255: the test attack's eps in units of 1/255.
        paper: where the paper's numbers are (None: the paper has none for this row).
        official_options: the method options of the official code that produced the paper's numbers, added to
            ``options`` under the ``paper`` profile (PMG-AFT: the published KL direction and summed KL);
            ``official_source`` cites that code, ``official_note`` says what is assumed where its code is not public.
    """

    key: str
    label: str
    method: str
    options: tuple[tuple[str, str], ...] | None
    eps_255: float
    paper: PaperRef | None
    not_reproducible: str = ""
    note: str = ""
    official_options: tuple[tuple[str, str], ...] = ()
    official_source: str = ""
    official_note: str = ""

    @property
    def reproducible(self) -> bool:
        return self.options is not None

    def option_dict(self) -> dict[str, str]:
        return dict(self.options or ())

    def options_for(self, official: bool) -> tuple[tuple[str, str], ...]:
        """The row's options, with its ``official_options`` underneath when ``official`` (the paper profile)."""
        merged = {**dict(self.official_options), **self.option_dict()} if official else self.option_dict()
        return tuple(sorted(merged.items()))

    @property
    def train_eps_255(self) -> float:
        """The training eps of the paper's run (tables 8-9 train at the test eps; every other row at 1/255)."""
        return float(self.option_dict().get("train_eps_255", PAPER_TRAIN_EPS_255))


@dataclass(frozen=True)
class Target:
    """A table or figure of the paper that ``zsbench reproduce`` regenerates.

    Attributes:
        id: ``table1`` ... ``table13``, ``fig4``, ``fig5``.
        kind: ``table`` or ``figure``.
        attack: ``pgd10`` (PGD-10, L-inf, steps of 1/255) or ``autoattack`` (standard), at each row's eps.
        train_dataset: where the trained rows were fine-tuned.
        columns: in the paper's order; per-dataset tables end with the average.
        figure: for figures, the ``robustbench_zs.report.figures`` function and its arguments.
    """

    id: str
    kind: str
    caption: str
    source: str
    attack: str
    train_dataset: str
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()
    figure: dict | None = field(default=None, compare=False, hash=False)

    @property
    def datasets(self) -> tuple[str, ...]:
        """Dataset ids any column needs (an average needs all 16), in the paper's order."""
        ids = [d.id for d in paper_datasets()]
        if any(c.dataset == AVERAGE for c in self.columns):
            return tuple(ids)
        wanted = {c.dataset for c in self.columns}
        return tuple(i for i in ids if i in wanted)

    @property
    def metrics(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.metric for c in self.columns))


def _document() -> dict:
    return read_json(__package__, "data/tables.json")


@cache
def paper_datasets() -> tuple[PaperDataset, ...]:
    """The 16 evaluation datasets in the paper's column order."""
    return tuple(PaperDataset(d["paper"], d["id"], int(d["images"])) for d in _document()["datasets"])


def dataset_images(dataset_id: str) -> int | None:
    """Test images of an evaluation dataset (protocol.md section 5), or None if it is not one of the 16."""
    return next((d.images for d in paper_datasets() if d.id == dataset_id), None)


def train_images(dataset_id: str) -> int | None:
    """Training images of a training set of the paper (TinyImageNet 100,000; CIFAR-100 50,000)."""
    entry = _document()["train_sets"].get(dataset_id)
    return int(entry["images"]) if entry else None


def paper_name(dataset: str) -> str:
    """Our dataset id (or :data:`AVERAGE`) -> the paper's column name in paper_tables.csv."""
    if dataset == AVERAGE:
        return PAPER_AVERAGE
    for d in paper_datasets():
        if d.id == dataset:
            return d.paper
    raise KeyError(dataset)


def _paper_ref(d: dict | None) -> PaperRef | None:
    if d is None:
        return None
    tables = tuple(sorted(d["tables"].items())) if "tables" in d else (("*", d["table"]),)
    return PaperRef(tables, d["method"], d.get("variant", ""), float(d["eps_255"]))


def _columns(spec: str | list, metric: str | None) -> tuple[Column, ...]:
    if spec == "datasets":
        return (*(Column(metric, d.id) for d in paper_datasets()), Column(metric, AVERAGE))
    return tuple(Column(c["metric"], c["dataset"]) for c in spec)


@cache
def targets() -> dict[str, Target]:
    """Every target by id, in the paper's order (tables 1-13, then figures 4 and 5)."""
    out = {}
    for tid, t in _document()["targets"].items():
        rows = tuple(
            Row(
                key=r["key"],
                label=r["label"],
                method=r["method"],
                options=None if r["options"] is None else tuple(sorted(r["options"].items())),
                eps_255=float(r["eps_255"]),
                paper=_paper_ref(r.get("paper")),
                not_reproducible=r.get("not_reproducible", ""),
                note=r.get("note", ""),
                official_options=tuple(sorted((r.get("official_options") or {}).items())),
                official_source=r.get("official_source", ""),
                official_note=r.get("official_note", ""),
            )
            for r in t["rows"]
        )
        out[tid] = Target(
            id=tid,
            kind=t["kind"],
            caption=t["caption"],
            source=t["source"],
            attack=t["attack"],
            train_dataset=t["train_dataset"],
            columns=_columns(t["columns"], t.get("metric")),
            rows=rows,
            notes=tuple(t.get("notes", ())),
            figure=t.get("figure"),
        )
    return out


def get_target(name: str) -> Target:
    """The named target, or a one-line error listing the known ones."""
    try:
        return targets()[name]
    except KeyError:
        raise ZSBenchError(f"unknown target {name!r}; choose one of {', '.join(targets())}") from None


def _csv_rows() -> tuple[dict, ...]:
    return read_csv(__package__, "data/paper_tables.csv")


@cache
def paper_numbers() -> dict[PaperKey, float]:
    """Every accuracy of the paper's tables: (table, method, variant, eps_255, metric, paper dataset) -> %."""
    out = {}
    for r in _csv_rows():
        if r["metric"] in ("clean", "robust"):
            key = (r["table"], r["method"], r["variant"], float(r["eps_255"]), r["metric"], r["dataset"])
            out[key] = float(r["value"])
    return out


@cache
def paper_epoch_seconds() -> dict[tuple[str, str, str, float], float]:
    """The per-epoch training time of the paper's tables (two RTX 3090s): (table, method, variant, eps) -> s."""
    return {
        (r["table"], r["method"], r["variant"], float(r["eps_255"])): float(r["value"])
        for r in _csv_rows()
        if r["metric"] == "epoch_seconds"
    }


def paper_value(row: Row, column: Column) -> float | None:
    """The paper's number for a row and column, or None where the paper gives none."""
    if row.paper is None:
        return None
    key = row.paper.key(column.metric, paper_name(column.dataset))
    return None if key is None else paper_numbers().get(key)


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _table_no(table: str) -> str:
    return table.removeprefix("table")


@cache
def paper_flags() -> dict[PaperKey, tuple[str, ...]]:
    """Paper cells that look wrong, each with the reasons (one line each), found by the rules of this module."""
    flags: dict[PaperKey, list[str]] = defaultdict(list)
    order = [d.paper for d in paper_datasets()]
    rows: dict[tuple, dict[str, float]] = defaultdict(dict)
    for (table, method, variant, eps, metric, ds), v in paper_numbers().items():
        rows[(table, method, variant, eps, metric)][ds] = v
    for head, values in rows.items():
        for left, right in pairwise(order):
            a, b = values.get(left), values.get(right)
            if a is not None and a == b and a >= EQUAL_NEIGHBOUR_MIN:
                flags[(*head, right)].append(
                    f"equals its left neighbour {left} ({_fmt(a)}) in the same row: probably a copied cell"
                )
        if PAPER_AVERAGE in values and all(d in values for d in order):
            mean = sum(values[d] for d in order) / len(order)
            if abs(mean - values[PAPER_AVERAGE]) > AVERAGE_TOLERANCE:
                flags[(*head, PAPER_AVERAGE)].append(
                    f"the mean of the row's {len(order)} values is {_fmt(mean)}, not {_fmt(values[PAPER_AVERAGE])}: "
                    "some cell of the row (or the average) is wrong"
                )
    for key, others in _cross_table_conflicts().items():
        listed = ", ".join(f"{_fmt(v)} in table {_table_no(t)}" for t, v in others)
        flags[key].append(f"the same cell is {listed}")
    return {k: tuple(v) for k, v in flags.items()}


def _cross_table_conflicts() -> dict[PaperKey, list[tuple[str, float]]]:
    """Cells given different values in two tables, keyed by each such cell, with the other tables' values.

    A cell's identity is what the paper says determines the number: method and options, the table's training set
    and the training eps, metric, the test attack and its eps (robust cells) and the dataset. The training set stays
    in the identity of zero-shot CLIP too, as the paper's tables give it, so tables 1 and 6 (CLIP evaluated beside
    two training runs, on differently subsampled test sets) are not compared. Rows whose settings the paper lost have
    no identity beyond themselves and are never compared.
    """
    cells: dict[tuple, dict[PaperKey, float]] = defaultdict(dict)
    for t in targets().values():
        if t.kind != "table":
            continue
        for row in t.rows:
            if not row.reproducible or row.paper is None:
                continue
            for col in t.columns:
                key = row.paper.key(col.metric, paper_name(col.dataset))
                value = paper_numbers().get(key) if key else None
                if value is None:
                    continue
                ident = (
                    row.method,
                    row.options,
                    t.train_dataset,
                    row.train_eps_255,
                    col.metric,
                    (t.attack, row.eps_255) if col.metric == "robust" else None,
                    col.dataset,
                )
                cells[ident][key] = value
    out: dict[PaperKey, list[tuple[str, float]]] = {}
    for members in cells.values():
        if len(set(members.values())) < 2:
            continue
        for key, value in members.items():
            others = sorted({(k[0], v) for k, v in members.items() if v != value}, key=lambda x: int(x[0][5:]))
            out[key] = others
    return out


def flags_for(row: Row, column: Column) -> tuple[str, ...]:
    """The reasons why this paper cell looks wrong (empty when it does not)."""
    if row.paper is None:
        return ()
    key = row.paper.key(column.metric, paper_name(column.dataset))
    return paper_flags().get(key, ()) if key else ()
