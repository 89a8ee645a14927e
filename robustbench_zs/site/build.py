"""``zsbench site``: a static website from accepted submissions and local records (plain HTML, CSS, a little JS).

Pages (all links relative, so the site works opened from the file system as well as served):

- ``index.html``: per protocol and robust radius, the main table (clean and robust averages with their bootstrap
  intervals, the best known robust accuracy, sanity flags; sortable, filterable by architecture and kind of method),
  the plots, and the published numbers apart;
- ``protocol-<name>.html``: per threat, the per-dataset tables, every number linking to its record with its Wilson
  interval;
- ``methods/<id>.html``: a method's card, checkpoint, protocol, profile knobs, sanity checks and numbers;
- ``records/<key>.html`` (and the record's JSON beside it): everything a number was measured with;
- ``published.html``: the published numbers, as their papers report them, not re-evaluated.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure

from ..atomic import replace_folder
from ..errors import ZSBenchError
from ..report.leaderboard import variant_id
from ..results import RecordStore
from ..results.record import Record, profile_knobs
from ..results.stats import bootstrap_mean_ci
from ..submit.package import SUBMISSION_FILE, _is_tuned, _weights_id, check_submission, sanity_failures
from ..submit.protocols import PROTOCOLS, SubmissionProtocol, get_protocol, protocol_of
from ..version import __version__
from . import published as pub

#: a file in every built site: ``zsbench site`` replaces only a folder that holds it
MARKER = ".zsbench-site"
HERE = Path(__file__).parent
KINDS = ("zero-shot", "fine-tuned", "test-time defense")


@dataclass
class Entry:
    """One evaluated model under one protocol: a submission, or local records not submitted."""

    id: str
    label: str
    method_id: str
    arch: str
    kind: str
    source: str  # "submission" or "local"
    protocol: SubmissionProtocol
    weights: str
    records: list[Record]
    card: dict | None = None
    submission: dict | None = None
    flags: list[str] = field(default_factory=list)  # failed sanity checks, as lines

    @property
    def training_data(self) -> str | None:
        if self.card:
            return self.card.get("training_data")
        return "none" if self.kind != "fine-tuned" else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.")[:60] or "method"


def _kind(records: Sequence[Record]) -> str:
    if any(r.defense for r in records):
        return "test-time defense"
    return "fine-tuned" if any(_is_tuned(r.model) for r in records) else "zero-shot"


def _record_page(r: Record) -> str:
    return f"records/{r.record_key[:16]}.html"


def gather(submissions: Sequence[Path], results: Sequence[Path]) -> tuple[list[Entry], dict]:
    """The site's entries: every submission (checked whole: schema, record hashes, protocol), then the local records
    of each results folder grouped by method variant, weights and protocol (a record a submission already holds is
    not shown twice). Returns the entries and what was left out (records of no protocol), for the index."""
    entries: list[Entry] = []
    seen: set[str] = set()
    ids: set[str] = set()
    for folder in submissions:
        folder = Path(folder)
        if not folder.is_dir():
            what = "not a folder" if folder.exists() else "no such folder"
            raise ZSBenchError(f"--submissions {folder}: {what} (give the folder zsbench submit --out wrote into)")
        subs = sorted(p.parent for p in folder.glob(f"*/{SUBMISSION_FILE}"))
        if (folder / SUBMISSION_FILE).is_file():
            subs.append(folder)
        if not subs:
            raise ZSBenchError(f"--submissions {folder}: no submission there (folders holding {SUBMISSION_FILE})")
        for s in subs:
            sub, records = check_submission(s)
            if sub["submission_id"] in ids:  # the same submission reached twice (a folder given twice, a copy)
                continue
            ids.add(sub["submission_id"])
            proto = get_protocol(sub["protocol"]["name"])
            label = sub["card"]["name"]
            entries.append(
                Entry(
                    id=sub["submission_id"],
                    label=label,
                    method_id=sub["card"]["method_id"],
                    arch=sub["card"]["architecture"],
                    kind="test-time defense" if sub["card"]["test_time_defense"] else _kind(records),
                    source="submission",
                    protocol=proto,
                    weights=_weights_id(records[0].model),
                    records=records,
                    card=sub["card"],
                    submission=sub,
                    flags=list(sub["sanity"]["failed"]),
                )
            )
            seen.update(r.record_key for r in records)
    left_out: dict[str, dict[str, int]] = {}  # label -> dataset -> records
    groups: dict[tuple, list[Record]] = {}
    for folder in results:
        folder = Path(folder)
        if not (folder / "records").is_dir():
            raise ZSBenchError(f"--results {folder}: no records folder there; run `zsbench run --out {folder}` first")
        for r in RecordStore(folder).iter_records():
            if r.record_key in seen:
                continue
            found = protocol_of(r)
            if found is None:
                per = left_out.setdefault(_short_paths(r.label), {})
                per[r.dataset["id"]] = per.get(r.dataset["id"], 0) + 1
                continue
            # one set of weights is one entry whatever its files were called when each record was computed (record
            # keys hold their hashes, not their names or paths, so a renamed copy reuses its records), named by the
            # newest record's label; a test-time defense's evaluations stay apart by their labels, which hold no path
            evaluations = r.label if r.evaluation is not None or r.defense is not None else ""
            groups.setdefault((variant_id(r, evaluation=False), evaluations, found[0].name), []).append(r)
    named = {k: k[1] or max(rs, key=lambda r: r.created_utc).label for k, rs in groups.items()}
    for (variant, evaluations, pname), records in sorted(groups.items(), key=lambda kv: (named[kv[0]], kv[0])):
        # the newest record of each cell (and evaluation), as the leaderboard takes it
        latest: dict[tuple, Record] = {}
        for r in sorted(records, key=lambda r: r.created_utc):
            ev = (r.evaluation or {}).get("adaptive", True)
            latest[(r.dataset["id"], r.threat, ev)] = r
        records = list(latest.values())
        label = named[(variant, evaluations, pname)]
        weights = _weights_id(records[0].model)
        arch = records[0].model["arch"]
        key = hashlib.sha256(json.dumps([variant, evaluations, pname]).encode()).hexdigest()[:8]
        entries.append(
            Entry(
                id=f"local-{_slug(_short_paths(label))[:40]}-{pname}-{key}",
                label=_short_paths(label),
                method_id=records[0].method,
                arch=arch,
                kind=_kind(records),
                source="local",
                protocol=get_protocol(pname),
                weights=weights,
                records=records,
            )
        )
    local = [e for e in entries if e.source == "local"]
    seen_labels: dict[tuple, int] = {}
    for e in local:
        seen_labels[(e.label, e.protocol.name)] = seen_labels.get((e.label, e.protocol.name), 0) + 1
    for e in local:  # one method evaluated with several checkpoints: rows told apart by their weights
        if seen_labels[(e.label, e.protocol.name)] > 1:
            name = max(e.records, key=lambda r: r.created_utc).model.get("checkpoint_name")  # its newest name
            e.label = f"{e.label} · {name or e.weights[:12]}"
    for e in local:  # each local entry's failed sanity checks, as a submission's
        e.flags = sanity_failures(e.records)
    return entries, left_out


def _short_paths(label: str) -> str:
    """A local label with each absolute path cut to its last part (the folder of a checkpoint, not the machine's
    layout): ``interpolation(alpha=0.5, theta1=/home/me/models/tecoa-x)`` -> ``...theta1=tecoa-x)``."""
    return re.sub(r"(?<![\w.])/(?:[^/,()\s]+/)+([^/,()\s]+)", r"\1", label)


# ------------------------------------------------------------------------------------------------------- tables


@dataclass
class Cell:
    value: float  # accuracy, %
    lo: float
    hi: float
    correct: int
    n: int
    href: str  # the record's page, relative to the site root
    flag: str = ""


def _cell(r: Record) -> Cell:
    lo, hi = r.ci95
    fails = [c.get("detail") or c["name"] for c in (r.sanity or {}).get("checks", []) if not c.get("passed", True)]
    return Cell(100 * r.accuracy, 100 * lo, 100 * hi, int(r.result["correct"]), r.n, _record_page(r), "; ".join(fails))


def _average(cells: list[Cell]) -> tuple[float, float, float] | None:
    if not cells:
        return None
    masks = [np.arange(c.n) < c.correct for c in cells]
    ci = bootstrap_mean_ci(masks)
    return float(np.mean([c.value for c in cells])), 100 * ci.low, 100 * ci.high


@dataclass
class Row:
    entry: Entry
    non_adaptive: bool
    cells: dict[str, Cell]  # dataset id -> cell
    average: tuple[float, float, float] | None


def _rows(entries: list[Entry], proto: SubmissionProtocol, threat: str) -> list[Row]:
    rows = []
    for e in entries:
        for non_adaptive in (False, True):
            cells = {}
            for r in e.records:
                cell = proto.cell_of(r)
                if cell is None or cell.label != threat:
                    continue
                if bool(r.evaluation and not r.evaluation.get("adaptive", True)) != non_adaptive:
                    continue
                cells[r.dataset["id"]] = _cell(r)
            if not cells:
                continue
            complete = all(d in cells for d in proto.datasets)
            avg = _average([cells[d] for d in proto.datasets]) if complete else None
            rows.append(Row(e, non_adaptive, cells, avg))
    # ranked rows by their average (incomplete ones after), the non-adaptive ones last, unranked
    rows.sort(key=lambda r: (r.non_adaptive, r.average is None, -(r.average[0] if r.average else 0), r.entry.label))
    return rows


def _best_known(e: Entry, eps: float, own: float | None) -> dict | None:
    """The lowest robust average of this model at ``eps`` found by any evaluation: this site's, or a published one
    of the same method, architecture and training data."""
    found = []
    if own is not None:
        found.append({"value": own, "source": "this evaluation", "external": False, "attack": ""})
    if e.training_data is not None:
        for b in pub.best_known_published((e.method_id, e.arch, e.training_data, ""), eps):
            found.append({"value": b.value, "source": b.source, "external": b.external, "attack": b.attack})
    return min(found, key=lambda b: b["value"]) if found else None


def _main_tables(entries: list[Entry], proto: SubmissionProtocol) -> list[dict]:
    clean = {(r.entry.id, r.non_adaptive): r for r in _rows(entries, proto, "clean")}
    tables = []
    for cell in proto.cells:
        if cell.attack == "clean":
            continue
        rows = []
        rank = 0
        for r in _rows(entries, proto, cell.label):
            c = clean.get((r.entry.id, False))
            ranked = not r.non_adaptive and r.average is not None
            rank += ranked
            rows.append(
                {
                    "row": r,
                    "rank": rank if ranked else None,
                    "clean": c.average if c else None,
                    "best": _best_known(r.entry, cell.eps_255, r.average[0] if r.average else None),
                }
            )
        tables.append({"cell": cell, "anchor": _slug(cell.label), "rows": rows})
    return tables


# -------------------------------------------------------------------------------------------------------- plots


def _plots(entries: list[Entry], proto: SubmissionProtocol, folder: Path) -> list[dict]:
    """Robust accuracy against eps (clean at 0), and clean against robust per radius; SVG files, no fonts needed.
    Each model keeps its colour and marker in every plot; the legend sits below the axes, so long names never
    cover a point."""
    folder.mkdir(parents=True, exist_ok=True)
    eps = [c for c in proto.cells if c.attack != "clean"]
    by_threat = {
        c.label: {r.entry.id: r for r in _rows(entries, proto, c.label) if not r.non_adaptive} for c in proto.cells
    }
    colours = colormaps["tab10"].colors
    markers = "osD^vP*Xh<>p"
    style = {
        e.id: {"color": colours[i % len(colours)], "marker": markers[(i // len(colours)) % len(markers)]}
        for i, e in enumerate(entries)
    }

    def figure(n_labels: int, width: float):
        # room below the axes for a one-column legend of n_labels lines
        fig = Figure(figsize=(width, 3.6 + 0.2 * n_labels), layout="constrained")
        return fig, fig.add_subplot()

    def finish(fig, ax, name: str) -> None:
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        fig.legend(loc="outside lower center", fontsize=8, frameon=False)
        with rc_context({"svg.hashsalt": "zsbench-site"}):  # the same SVG for the same numbers
            fig.savefig(folder / name, format="svg", metadata={"Date": None})

    out = []
    series = []
    for e in entries:
        xs, ys, lo, hi = [], [], [], []
        for c in proto.cells:
            row = by_threat[c.label].get(e.id)
            if row is None or row.average is None:
                continue
            xs.append(0.0 if c.attack == "clean" else c.eps_255)
            ys.append(row.average[0])
            lo.append(row.average[0] - row.average[1])
            hi.append(row.average[2] - row.average[0])
        if len(xs) >= 2:
            series.append((e, xs, ys, lo, hi))
    if series:
        fig, ax = figure(len(series), 6.4)
        for e, xs, ys, lo, hi in series:
            ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, label=e.label, **style[e.id])
        ax.set_xlabel("eps (/255; 0 = clean)")
        ax.set_ylabel("average accuracy (%)")
        ax.set_title(f"{proto.name}: robust accuracy against eps ({proto.attack})", fontsize=10)
        name = f"{proto.name}-robust-vs-eps.svg"
        finish(fig, ax, name)
        out.append(
            {"file": f"plots/{name}", "title": "Robust accuracy against eps (averages, 95% bootstrap intervals)"}
        )
    for c in eps:
        points = []
        for e in entries:
            rc, rr = by_threat["clean"].get(e.id), by_threat[c.label].get(e.id)
            if rc is None or rr is None or rc.average is None or rr.average is None:
                continue
            points.append((e, rc.average, rr.average))
        if not points:
            continue
        fig, ax = figure(len(points), 5.6)
        for e, ca, ra in points:
            ax.errorbar(
                [ca[0]],
                [ra[0]],
                xerr=[[ca[0] - ca[1]], [ca[2] - ca[0]]],
                yerr=[[ra[0] - ra[1]], [ra[2] - ra[0]]],
                capsize=2,
                label=e.label,
                linestyle="none",
                **style[e.id],
            )
        ax.set_xlabel("clean average accuracy (%)")
        ax.set_ylabel(f"robust average accuracy (%), {c.label}")
        ax.set_title(f"{proto.name}: clean against robust, eps {c.eps_255:g}/255", fontsize=10)
        ax.set_xlim(0, 100)
        name = f"{proto.name}-clean-vs-robust-eps{c.eps_255:g}.svg"
        finish(fig, ax, name)
        out.append({"file": f"plots/{name}", "title": f"Clean against robust accuracy at eps {c.eps_255:g}/255"})
    return out


# ------------------------------------------------------------------------------------------------------ render


def _env():
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v, d=2: "—" if v is None else f"{v:.{d}f}"
    env.filters["eps"] = lambda v: f"{v:g}/255"
    env.filters["short"] = lambda s, n=12: (s or "")[:n]
    return env


def _record_view(r: Record) -> dict:
    lo, hi = r.ci95
    return {
        "r": r,
        "json": f"{r.record_key[:16]}.json",
        "accuracy": 100 * r.accuracy,
        "lo": 100 * lo,
        "hi": 100 * hi,
        "attack": json.dumps(r.attack, indent=1, sort_keys=True, ensure_ascii=False),
        "profile": json.dumps(r.profile, indent=1, sort_keys=True, ensure_ascii=False),
        "checks": (r.sanity or {}).get("checks", []),
    }


def build_site(
    out: str | os.PathLike,
    submissions: Sequence[str | os.PathLike] = (),
    results: Sequence[str | os.PathLike] = (),
    include_published: bool = True,
) -> dict:
    """Write the site to ``out`` (whole: built beside it, then moved into place); returns a summary."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ZSBenchError(
            f"--out {out} exists and is not a site built by zsbench site (no {MARKER} in it): choose a new or empty "
            "folder"
        )
    if not submissions and not results:
        raise ZSBenchError("nothing to build from: give --submissions DIR (accepted submissions) and/or --results DIR")
    entries, left_out = gather([Path(s) for s in submissions], [Path(r) for r in results])
    if not entries:
        raise ZSBenchError(
            "no submission and no local record fits a protocol (gold, fast or world): nothing to show; run "
            "`zsbench run --preset world` or `zsbench run --tier fast` first"
        )
    env = _env()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise ZSBenchError(f"cannot write beside --out {out} ({e.strerror or e}): choose a writable folder") from None
    try:
        _write(tmp, env, entries, left_out, include_published)
        (tmp / MARKER).write_text(f"built by robustbench_zs {__version__}\n", encoding="utf-8")
        tmp.chmod(0o755)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": out,
        "entries": len(entries),
        "protocols": sorted({e.protocol.name for e in entries}),
        "records": sum(len(e.records) for e in entries),
        "left_out": left_out,
    }


def _write(root: Path, env, entries: list[Entry], left_out: dict, include_published: bool) -> None:
    (root / "static").mkdir()
    for name in ("site.css", "site.js"):
        shutil.copyfile(HERE / "static" / name, root / "static" / name)
    protocols = []
    for name in PROTOCOLS:
        proto = get_protocol(name)
        mine = [e for e in entries if e.protocol.name == name]
        if not mine:
            continue
        protocols.append(
            {
                "p": proto,
                "entries": mine,
                "main": _main_tables(mine, proto),
                "threats": [
                    {"cell": c, "anchor": _slug(c.label), "rows": _rows(mine, proto, c.label)} for c in proto.cells
                ],
                "plots": _plots(mine, proto, root / "plots"),
                "dataset_names": {r.dataset["id"]: r.dataset["name"] for e in mine for r in e.records},
            }
        )
    published_rows = list(pub.published()) if include_published else []
    best = {}
    for r in published_rows:
        for by_eps in r.robust.values():
            for eps in by_eps:
                found = pub.best_known_published(r.model_key, eps) if r.method else []
                best[(r.label, r.source, eps)] = found[0] if found else None
    common = {
        "version": __version__,
        "archs": sorted({e.arch for e in entries}),
        "kinds": [k for k in KINDS if any(e.kind == k for e in entries)],
    }

    def page(path: str, template: str, **kw) -> None:
        depth = path.count("/")
        html = env.get_template(template).render(root="../" * depth, **common, **kw)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(html, encoding="utf-8")

    page(
        "index.html",
        "index.html.j2",
        protocols=protocols,
        left_out=left_out,
        published=published_rows,
        best=best,
        sources=pub.sources(),
    )
    for p in protocols:
        page(f"protocol-{p['p'].name}.html", "protocol.html.j2", p=p)
    for e in entries:
        rows = {c.label: _rows([e], e.protocol, c.label) for c in e.protocol.cells}
        names = {r.dataset["id"]: r.dataset.get("name", r.dataset["id"]) for r in e.records}
        page(
            f"methods/{e.id}.html",
            "method.html.j2",
            e=e,
            rows=rows,
            datasets=[(d, names.get(d, d)) for d in e.protocol.datasets],
            knobs=profile_knobs(e.records[0].profile),
        )
        for r in e.records:
            page(_record_page(r), "record.html.j2", v=_record_view(r), e=e)
            shutil.copyfile(r.path, root / "records" / f"{r.record_key[:16]}.json")
    if include_published:
        page(
            "published.html",
            "published.html.j2",
            published=published_rows,
            best=best,
            sources=pub.sources(),
            about=pub.about(),
        )
