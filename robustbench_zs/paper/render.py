"""Markdown of a PMG-AFT target in the paper's row and column order, our numbers beside the paper's.

Each cell holds three numbers: ours with its Wilson 95% interval (and "n of N images" when the record covers part of
the split), the paper's, and the difference; "missing" where no record exists, "not reproducible" for rows whose
settings the paper lost. Flagged paper cells carry ⚠N with the reasons listed below the table
(:func:`robustbench_zs.paper.targets.paper_flags`). Our averages need all 16 datasets of the row; their interval is
a bootstrap 95% interval over images (:func:`robustbench_zs.results.bootstrap_mean_ci` on the records' per-image
results, each dataset's images resampled on their own, seed 0), as on the leaderboard.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tabulate import tabulate

from ..methods import METHODS
from ..profiles import PAPER_SUBSAMPLE_BATCH, PAPER_SUBSAMPLE_EVERY, PROFILES, Profile, train_profile_for
from ..results import RecordStore
from ..results.stats import bootstrap_mean_ci
from .match import Found
from .plan import Cell, find_checkpoint, official, paper_threat, plan, resolve_profile
from .targets import (
    AVERAGE,
    Column,
    Row,
    Target,
    flags_for,
    get_target,
    paper_datasets,
    paper_epoch_seconds,
    paper_name,
    paper_value,
    train_images,
)

#: Shown for a cell without a record.
MISSING = "missing"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _ours(found: Found | None) -> str:
    """Our accuracy with its Wilson interval, and the images it covers where that is part of the split."""
    if found is None:
        return MISSING
    lo, hi = found.ci95
    text = f"{_pct(found.accuracy)} [{100 * lo:.1f}–{100 * hi:.1f}]"
    if found.n < found.n_total:
        text += f" ({found.n} of {found.n_total} images)"
    return text


def profile_line(prof: Profile) -> str:
    """The profile's name and knobs in one line (the knobs are what make numbers comparable)."""
    knobs = ", ".join(f"{k} {v}" for k, v in prof.knobs().items() if k != "paper_subsample")
    name = f"`{prof.name}`"
    if prof.paper_subsample:
        base = next(
            (p.name for p in PROFILES.values() if p.knobs() == {**prof.knobs(), "paper_subsample": False}), None
        )
        name = f"`{base}` with the paper subsample (recorded as `{prof.name}`)" if base else name
        knobs += f"; every {PAPER_SUBSAMPLE_EVERY}th batch of {PAPER_SUBSAMPLE_BATCH} images only"
    return f"profile {name} ({knobs})"


def _column_header(t: Target, col: Column) -> str:
    name = paper_name(col.dataset)
    if len(t.metrics) > 1 or t.kind == "figure":
        return f"{col.metric.capitalize()} ({name})"
    return name


def _per_image(found: Found) -> np.ndarray:
    """The record's per-image correctness; where its file cannot be read any more, a mask with the same count of
    correct images (all the bootstrap uses)."""
    try:
        return RecordStore.read_path(found.path).per_example()
    except (OSError, ValueError, KeyError):
        return np.arange(found.n) < round(found.accuracy * found.n)


def _average(row: Row, metric: str, matches: dict[tuple[str, str, str], Found | None]) -> tuple[float | None, str]:
    """Our mean over the 16 datasets of a row's metric with its bootstrap 95% interval over images, and its text;
    None unless every dataset has a record."""
    ids = [d.id for d in paper_datasets()]
    found = [matches.get((row.key, metric, ds)) for ds in ids]
    have = [f for f in found if f is not None]
    if len(have) < len(ids):
        return None, f"n/a ({len(have)} of {len(ids)})"
    ci = bootstrap_mean_ci([_per_image(f) for f in have])
    partial = sum(f.n < f.n_total for f in have)
    note = f" ({partial} on subsets)" if partial else ""
    return ci.mean, f"{_pct(ci.mean)} [{100 * ci.low:.1f}–{100 * ci.high:.1f}]{note}"


class _FlagNotes:
    """Numbers the flagged paper cells (⚠1, ⚠2, ...) and collects their reasons for the notes below the table."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def mark(self, t: Target, row: Row, col: Column, value: float) -> str:
        reasons = flags_for(row, col)
        if not reasons:
            return ""
        self.lines.append(
            f"⚠{len(self.lines) + 1} {row.label}, {_column_header(t, col)} = {value:.2f} "
            f"(table {row.paper.table_for(col.metric).removeprefix('table')}): " + "; ".join(reasons) + "."
        )
        return f" ⚠{len(self.lines)}"


def train_profile_line(prof: Profile) -> str:
    """The training knobs that go with an evaluation profile, in one line (``profiles.train_profile_for``)."""
    tp = train_profile_for(prof)
    return f"training profile `{tp.name}` (" + ", ".join(f"{k} {v}" for k, v in tp.knobs().items()) + ")"


def _training_lines(
    t: Target,
    matches: dict[tuple[str, str, str], Found | None],
    models_dir: Path | None,
    arch: str,
    pretrained: str,
    prof: Profile | None = None,
) -> list[str]:
    """The paper's per-epoch training time beside our measured training images/s, one line per trained row."""
    seconds = paper_epoch_seconds()
    images = train_images(t.train_dataset)
    lines, seen = [], set()
    for row in t.rows:
        if not row.reproducible or METHODS.get(row.method).trains == "nothing" or (row.method, row.options) in seen:
            continue
        paper = None
        if row.paper is not None:
            ref = row.paper
            paper = next(
                (
                    seconds[k]
                    for _, table in ref.tables
                    if (k := (table, ref.method, ref.variant, ref.eps_255)) in seconds
                ),
                None,
            )
        folder = None
        names = {f.checkpoint_name for (r, _, _), f in matches.items() if r == row.key and f and f.checkpoint_name}
        if models_dir is not None:
            if len(names) == 1:
                folder = Path(models_dir) / names.pop()
            else:
                folder = find_checkpoint(
                    Path(models_dir),
                    row.method,
                    dict(row.options_for(prof is not None and official(prof))),
                    t.train_dataset,
                    arch,
                    pretrained,
                    None if prof is None else train_profile_for(prof),
                )
        ips = None
        if folder is not None and (folder / "meta.json").is_file():
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            ips = meta.get("images_per_second") or None
        if paper is None and ips is None:
            continue
        seen.add((row.method, row.options))  # one line per trained model (fig4 evaluates each at several eps)
        ours = "ours: no measured training throughput yet"
        if ips:
            ours = f"ours: {ips:.1f} training images/s"
            if images:
                ours += f" ({images / ips:.0f} s per epoch of {images:,} images)"
        theirs = f"paper: {paper:.0f} s per epoch (two RTX 3090s)" if paper else "paper: no time given"
        lines.append(f"- {row.label}: {theirs}; {ours}.")
    return lines


def _attack_line(t: Target, prof: Profile) -> str:
    """The target's test attack in words, e.g. ``PGD-10, L∞, steps of 1/255, fp16, at ε = 1/255``."""
    threat = paper_threat(t.attack, 1.0, prof)
    what = {"pgd10": "PGD-10, L∞, steps of 1/255", "autoattack": "AutoAttack (standard), L∞"}[t.attack]
    eps = sorted({r.eps_255 for r in t.rows})
    at = f"ε = {eps[0]:g}/255" if len(eps) == 1 else "each row's ε"
    return f"{what}, {threat.precision}, at {at}"


def render(
    target: str,
    matches: dict[Cell, Found | None],
    profile: str | Profile = "paper",
    *,
    arch: str = "ViT-B-32",
    pretrained: str = "openai",
    models_dir: Path | None = None,
    paper_subsample: bool | None = None,
    extra: Iterable[str] = (),
) -> str:
    """Markdown of ``target`` in the paper's row and column order: ours [95% CI] / paper / difference per cell.

    Args:
        matches: from :func:`match` (cells of other targets are ignored).
        extra: lines appended at the end (e.g. the figure files).
    """
    t = get_target(target)
    prof = resolve_profile(profile, paper_subsample)
    by_key = {(c.row, c.metric, c.dataset): f for c, f in matches.items() if c.target == t.id}
    flags = _FlagNotes()
    body = []
    for row in t.rows:
        cells = [row.label]
        for col in t.columns:
            paper = paper_value(row, col)
            paper_text = "—" if paper is None else f"{paper:.2f}" + flags.mark(t, row, col, paper)
            if not row.reproducible:
                cells.append(f"not reproducible / {paper_text}")
                continue
            if col.dataset == AVERAGE:
                ours_value, ours_text = _average(row, col.metric, by_key)
            else:
                found = by_key.get((row.key, col.metric, col.dataset))
                ours_value, ours_text = (None if found is None else found.accuracy), _ours(found)
            text = f"{ours_text} / {paper_text}"
            if ours_value is not None and paper is not None:
                text += f" / {100 * ours_value - paper:+.2f}"
            cells.append(text)
        body.append(cells)
    headers = ["Method", *(_column_header(t, c) for c in t.columns)]
    planned = plan(t.id, prof)
    n_found = sum(by_key.get((c.row, c.metric, c.dataset)) is not None for c in planned)
    title = f"Table {t.id.removeprefix('table')}" if t.kind == "table" else f"Figure {t.id.removeprefix('fig')}"
    lines = [
        f"# {title} of PMG-AFT, reproduced",
        "",
        f"{t.caption}.",
        "",
        f"Source: {t.source}.",
        "",
        f"Protocol: {profile_line(prof)}; base model {arch}/{pretrained}; trained rows fine-tuned on "
        f"{t.train_dataset} with the {train_profile_line(prof)}; test attack {_attack_line(t, prof)}.",
        "",
        "Each cell: ours [Wilson 95% interval] / the paper's / ours − paper, in %. "
        f"*{MISSING}*: no record yet (`zsbench reproduce {t.id}` runs it); ⚠N: the paper's number looks wrong "
        "(see the notes). Our averages need all 16 datasets: *n/a (k of 16)* says how many have a record; their "
        "interval is a bootstrap 95% interval over images (each dataset's images resampled on their own).",
        "",
        f"Records found for {n_found} of the {len(planned)} cells our table needs.",
        "",
        tabulate(body, headers=headers, tablefmt="github", disable_numparse=True),
    ]
    notes = list(t.notes)
    if official(prof):  # the official code's method options, one note per set of rows that share them
        groups: dict[tuple, list[str]] = {}
        for row in t.rows:
            if row.reproducible and row.official_options:
                groups.setdefault((row.official_options, row.official_source, row.official_note), []).append(row.label)
        for (opts, source, note), labels in groups.items():
            text = ", ".join(f"{k}={v}" for k, v in opts)
            notes.append(
                f"{', '.join(labels)}: trained with the official code's options {text} ({source})"
                + (f"; {note}" if note else "")
            )
    unreproducible = [f"{r.label}: {r.not_reproducible}" for r in t.rows if not r.reproducible]
    partial = sorted(
        {f"{ds} ({f.n} of {f.n_total} images)" for (_, _, ds), f in by_key.items() if f and f.n < f.n_total}
    )
    if notes or unreproducible or partial or flags.lines:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in notes]
        lines += [f"- Not reproducible: {u}." for u in unreproducible]
        if partial:
            lines.append(f"- Evaluated on part of a split: {', '.join(partial)}.")
        lines += [f"- {f}" for f in flags.lines]
    training = _training_lines(t, by_key, models_dir, arch, pretrained, prof)
    if training:
        lines += ["", "## Training time", "", *training]
    lines += [*(["", *extra] if extra else []), ""]
    return "\n".join(lines)
