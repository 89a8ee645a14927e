"""The paper's figures from the records: robust accuracy against eps (Fig. 4) and the clean/robust trade-off (Fig. 5).

Both take ``report.leaderboard.records_frame(out_dir)`` and draw only numbers measured under one protocol profile
(normalization, logit scale, prompts, preprocessing) and one threat family (attack, norm, steps, precision, attack
seed), so no curve joins points measured differently. Each figure is saved as a PNG together with a CSV of exactly
the numbers it plots. Rendering uses matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.transforms import Bbox

from ..atomic import replacing, write_text
from ..datasets import DATASETS
from ..errors import ZSBenchError
from ..methods import METHODS
from ..results import RecordStore, bootstrap_mean_ci
from .compare import select

#: Attack settings that change along a curve of fig4 (everything else fixes the threat family).
_ALONG_EPS = ("eps", "eps_255", "step_size", "step_size_255")

_EPS_AXIS = "ε (×1/255)"
_ROBUST_AXIS = "robust accuracy (%)"


# ------------------------------------------------------------------------------------------------ selection


def _profile_of(protocol: str) -> str:
    return json.dumps(json.loads(protocol)["profile"], sort_keys=True)


def _family_of(protocol: str) -> str:
    p = json.loads(protocol)
    attack = {k: v for k, v in p["attack"].items() if k not in _ALONG_EPS}
    return json.dumps({"attack": attack, "attack_seed": p["attack_seed"]}, sort_keys=True)


def _family_label(table: str) -> str:
    """``PGD-10 L∞ ε=1/255`` -> ``PGD-10 L∞``: the threat label without its radius."""
    return re.sub(r"\s*ε=\S+/255", "", table).strip()


def _describe(profiles: list[str]) -> list[str]:
    """Each profile as the ``key=value`` pairs that set it apart from the others."""
    dicts = [json.loads(p) for p in profiles]
    keys = sorted({k for d in dicts for k in d})
    varying = [k for k in keys if len({json.dumps(d.get(k)) for d in dicts}) > 1] or keys
    return [", ".join(f"{k}={d.get(k)}" for k in varying) for d in dicts]


def _pick_profile(df: pd.DataFrame, profile: dict | None) -> pd.DataFrame:
    """The rows of one profile: the only one present, or the one whose fields match all of ``profile``'s."""
    keys = df["protocol"].map(_profile_of)
    candidates = sorted(keys.unique())
    if profile:
        candidates = [c for c in candidates if all(json.loads(c).get(k) == v for k, v in profile.items())]
        if not candidates:
            raise ZSBenchError(f"no records under profile {profile}; profiles present: {_profiles_line(keys)}")
    if len(candidates) > 1:
        raise ZSBenchError(
            f"records of {len(candidates)} protocol profiles; pass profile= one of: "
            + " | ".join(_describe(candidates))
        )
    return df[keys == candidates[0]]


def _profiles_line(keys: pd.Series) -> str:
    return " | ".join(_describe(sorted(keys.unique())))


def _select_methods(df: pd.DataFrame, methods: list[str] | None) -> pd.DataFrame:
    if not methods:
        return df

    return pd.concat([select(df, m) for m in methods]).drop_duplicates("record")


def _with_lines(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``line``: the method label, or ``label · model`` where one label spans several evaluated models."""
    df = df.copy()
    several = (df["model"] + "@" + df["weights"]).groupby(df["method"]).transform("nunique") > 1
    df["line"] = df["method"].where(~several, df["method"] + " · " + df["model"])
    return df


def _one_subset(df: pd.DataFrame) -> pd.DataFrame:
    """Per (line, dataset), the records of one set of images: the subset with most records, then most images.

    Then one record per threat (the newest, as on the leaderboard), so every point of a line on a dataset is
    measured on the same images.
    """
    df = df.assign(_subset=df["indices_sha256"] + "|" + df["content_sha256"])
    keep = []
    for _, g in df.groupby(["line", "dataset"], sort=False):
        score = g.groupby("_subset").agg(count=("record", "size"), n=("n", "max"), newest=("created_utc", "max"))
        best = score.sort_values(["count", "n", "newest"], ascending=False).index[0]
        keep.append(g[g["_subset"] == best])
    out = pd.concat(keep) if keep else df
    out = out.sort_values("created_utc").drop_duplicates(["line", "dataset", "table", "protocol"], keep="last")
    return out.drop(columns="_subset")


def _line_order(df: pd.DataFrame) -> list[str]:
    names = METHODS.names()
    first = df.drop_duplicates("line").set_index("line")["method_id"]
    return sorted(first.index, key=lambda n: (names.index(first[n]) if first[n] in names else len(names), n))


def _dataset_order(present) -> list[str]:
    order = DATASETS.names()
    return sorted(set(present), key=lambda d: (order.index(d) if d in order else len(order), d))


def _colors(lines: list[str]) -> dict[str, tuple]:
    cmap = colormaps["tab10" if len(lines) <= 10 else "tab20"]
    return {line: cmap(i % cmap.N) for i, line in enumerate(lines)}


def _short(label: str) -> str:
    """Method labels for a legend: option values that are paths shortened to their last component."""

    def shorten(m: re.Match) -> str:
        value = m.group(2)
        return f"{m.group(1)}={Path(value).name}" if "/" in value or "\\" in value else m.group(0)

    return re.sub(r"(\w+)=([^,()]+)", shorten, label)


def _text_width(fig, text: str, fontsize: float) -> float:
    """Width in inches of the widest line of ``text`` at ``fontsize``, as the figure's Agg renderer draws it."""
    renderer = fig.canvas.get_renderer()
    prop = FontProperties(size=fontsize)
    widths = [renderer.get_text_width_height_descent(line, prop, ismath=False)[0] for line in text.split("\n")]
    return max(widths, default=0.0) / fig.dpi


def _fit(fig, text: str, width_in: float, fontsize: float) -> str:
    """``text`` made to fit ``width_in`` at ``fontsize``: unchanged if it fits, else broken after its semicolons, then
    wrapped at spaces (textwrap), fewer characters a line each try, until every line fits."""
    if _text_width(fig, text, fontsize) <= width_in:
        return text
    paragraphs = [part for line in text.split("\n") for part in line.split("; ")]
    wrapped = "\n".join(paragraphs)
    for chars in range(max(len(p) for p in paragraphs), 5, -1):
        wrapped = "\n".join(textwrap.fill(p, chars) for p in paragraphs)
        if _text_width(fig, wrapped, fontsize) <= width_in:
            break
    return wrapped


#: Legend font size (points) and what a column adds to its widest label: the handle, the pad and the spacing.
_LEGEND_FONTSIZE = 10
_LEGEND_EXTRA_IN = 0.75


def _legend_layout(fig, labels: list[str], width_in: float) -> tuple[list[str], int, float]:
    """Legend labels wrapped to the figure's width, the columns they fit in, and the legend's height in inches."""
    labels = [_fit(fig, label, width_in - _LEGEND_EXTRA_IN - 0.2, _LEGEND_FONTSIZE) for label in labels]
    widest = max((_text_width(fig, label, _LEGEND_FONTSIZE) for label in labels), default=1.0)
    ncol = max(1, min(len(labels), int((width_in - 0.2) // (widest + _LEGEND_EXTRA_IN))))
    lines = max((label.count("\n") + 1 for label in labels), default=1)
    rows = math.ceil(len(labels) / ncol)
    return labels, ncol, rows * (lines * _LEGEND_FONTSIZE * 1.25 / 72 + 0.08) + 0.1


def _new_figure(width: float, height: float):
    """A constrained-layout figure on its own Agg canvas (so that text can be measured before it is saved)."""
    fig = Figure(figsize=(width, height), layout="constrained", dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _stem(name: str | None, default: str) -> str:
    if name is None:
        return default
    if not name or Path(name).name != name or name.startswith("."):
        raise ZSBenchError(f"figure name {name!r}: give a file name without folders or suffix, e.g. 'fig4-paper'")
    return name


# ------------------------------------------------------------------------------------------------ fig4


def fig4(
    df: pd.DataFrame,
    out_dir: Path,
    methods: list[str] | None = None,
    profile: dict | None = None,
    threat: str | None = None,
    name: str | None = None,
) -> dict[str, Path]:
    """Robust accuracy against eps, one subplot per dataset and one line per method (the paper's Fig. 4).

    Each point carries its Wilson 95% interval. Where a method has a clean record on a dataset, its clean accuracy
    is drawn at eps = 0. A line on a dataset uses the records of one set of images (see :func:`_one_subset`).
    Lines are shifted slightly along x so that coinciding ones stay visible; the CSV holds the true radii.

    Args:
        df: ``records_frame(out_dir)``.
        out_dir: folder for ``<name>.png`` and ``<name>.csv`` (created if missing).
        methods: method labels, ids or ``label · model`` names to draw (default: all).
        profile: profile fields that pick one profile where the records hold several, e.g.
            ``{"normalization": "clip"}``.
        threat: the threat family where the records hold several, as its label without the radius, e.g.
            ``"PGD-10 L∞"``.
        name: the files' name without suffix (default ``fig4``; ``zsbench reproduce`` names them like its
            Markdown, ``fig4-<profile>``).

    Returns:
        ``{"png": path, "csv": path}``.

    Raises:
        ZSBenchError: no robust records, or several profiles / threat families and no choice among them.
    """
    stem = _stem(name, "fig4")
    fig, table = _fig4_figure(df, methods, profile, threat)
    return _save(fig, table, Path(out_dir), stem)


def _save(fig, table: pd.DataFrame, out_dir: Path, stem: str) -> dict[str, Path]:
    paths = {"png": out_dir / f"{stem}.png", "csv": out_dir / f"{stem}.csv"}
    write_text(paths["csv"], table.to_csv(index=False))
    with replacing(paths["png"]) as tmp:
        fig.savefig(tmp, format="png")
    return paths


def _fig4_figure(
    df: pd.DataFrame, methods: list[str] | None, profile: dict | None, threat: str | None
) -> tuple[object, pd.DataFrame]:
    """The figure of :func:`fig4` (not saved) and the table of its numbers."""
    df = _select_methods(df, methods)
    robust = df[df["table"] != "Clean"]
    if robust.empty:
        raise ZSBenchError("fig4 needs records under attack; run `zsbench run` with an attack first")
    robust = _pick_family(_pick_profile(robust, profile), threat)
    prof = _profile_of(robust["protocol"].iloc[0])
    clean = df[(df["table"] == "Clean") & (df["protocol"].map(_profile_of) == prof)]
    data = _with_lines(pd.concat([robust, clean]))
    data = _one_subset(data)
    steps = data[data["table"] != "Clean"].groupby(["line", "dataset", "eps_255"])["protocol"].nunique()
    if (steps > 1).any():
        line, ds, eps = steps[steps > 1].index[0]
        raise ZSBenchError(f"{line} on {ds} at ε={eps:g}/255 was attacked with several step sizes; filter df first")
    lines = _line_order(data)
    datasets = _dataset_order(data["dataset"])
    colors = _colors(lines)
    family = _family_label(robust["table"].iloc[0])

    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    # one panel alone is widened, so that the title and the legend's method labels have room
    width = max(4.2 * ncols, 5.6)
    fig = _new_figure(width, 3.3 * nrows)
    title = _fit(
        fig, f"Robust accuracy under {family} (ε = 0: clean accuracy); bars: Wilson 95% intervals", width - 0.3, 11
    )
    legend_labels, legend_cols, legend_h = _legend_layout(fig, [_short(line) for line in lines], width)
    fig.set_size_inches(width, 3.3 * nrows + 0.35 + 0.2 * title.count("\n") + legend_h)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    handles = {}
    for i, ds in enumerate(datasets):
        ax = axes[i]
        d = data[data["dataset"] == ds]
        # lines that coincide (e.g. interpolation at alpha 0 and clip) stay visible: each is shifted a little in x
        span = max(float(d["eps_255"].max()), 1.0)
        for j, line in enumerate(lines):
            pts = d[d["line"] == line].sort_values("eps_255")
            if pts.empty:
                continue
            acc = pts["accuracy"].to_numpy()
            yerr = np.vstack([acc - pts["ci95_low"].to_numpy(), pts["ci95_high"].to_numpy() - acc])
            dodge = (j - (len(lines) - 1) / 2) * 0.012 * span
            h = ax.errorbar(
                pts["eps_255"] + dodge,
                acc,
                yerr=yerr,
                color=colors[line],
                marker="o",
                ms=4,
                lw=1.5,
                capsize=2.5,
                elinewidth=1,
                alpha=0.9,
            )
            handles.setdefault(line, h)
        ns = sorted(d["n"].unique())
        n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
        ax.set_title(_fit(fig, f"{d['dataset_name'].iloc[0]} ({n_text})", width / ncols - 0.8, 10), fontsize=10)
        eps_ticks = sorted(d["eps_255"].unique())
        ax.set_xticks(eps_ticks, [f"{e:g}" for e in eps_ticks])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel(_ROBUST_AXIS)
        if i >= len(datasets) - ncols:
            ax.set_xlabel(_EPS_AXIS)
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    shown = [k for k, line in enumerate(lines) if line in handles]
    fig.legend(
        [handles[lines[k]] for k in shown],
        [legend_labels[k] for k in shown],
        loc="outside lower center",
        ncol=legend_cols,
        frameon=False,
        fontsize=_LEGEND_FONTSIZE,
    )

    table = data.assign(threat=data["table"], ci_low=data["ci95_low"], ci_high=data["ci95_high"])
    table = table.assign(_d=table["dataset"].map(datasets.index), _l=table["line"].map(lines.index))
    table = table.sort_values(["_d", "_l", "eps_255"])
    cols = ["line", "method", "model", "dataset", "eps_255", "threat", "accuracy", "ci_low", "ci_high", "n", "record"]
    return fig, table[cols].rename(columns={"line": "method", "method": "method_label"})


def _pick_family(robust: pd.DataFrame, threat: str | None) -> pd.DataFrame:
    """The robust rows of one threat family (attack settings other than the radius, attack seed)."""
    fam = robust["protocol"].map(_family_of)
    labels = robust["table"].map(_family_label)
    names = {}
    for f, label in sorted(set(zip(fam, labels, strict=True))):
        names.setdefault(label, []).append(f)
    chosen = [f for label, fs in names.items() for f in fs if threat is None or label == threat]
    if threat is not None and not chosen:
        raise ZSBenchError(f"no records under {threat!r}; threat families present: {', '.join(sorted(names))}")
    if len(chosen) > 1:
        clash = [label for label, fs in names.items() if len(fs) > 1 and (threat is None or label == threat)]
        if clash:
            raise ZSBenchError(
                f"several {clash[0]} protocols (attack seed or settings differ); filter the records frame first"
            )
        raise ZSBenchError(f"records of several threat families; pass threat= one of: {', '.join(sorted(names))}")
    return robust[fam == chosen[0]]


# ------------------------------------------------------------------------------------------------ fig5


def _alpha(row: pd.Series) -> float:
    """An interpolation row's alpha: from its record's method config, else from its label."""
    try:
        record = RecordStore.read_path(Path(row["record"]))
        return float(record.model["method_config"]["alpha"])
    except (OSError, ValueError, KeyError, TypeError):
        m = re.search(r"alpha=([-+0-9.eE]+)", row["method"])
        if not m:
            raise ZSBenchError(f"{row['record']}: no interpolation alpha in the record or its label") from None
        return float(m.group(1))


def _curve_name(label: str) -> str:
    """An interpolation label without its alpha: the rows of one WiSE-FT curve share it."""
    inner = re.sub(r"alpha=[^,()]+(, )?", "", label)
    return re.sub(r"(, )?\)$", ")", inner).replace("()", "")


def _masks(rows: pd.DataFrame) -> list[np.ndarray]:
    return [RecordStore.read_path(Path(p)).per_example() for p in rows["record"]]


def fig5(
    df: pd.DataFrame,
    out_dir: Path,
    methods: list[str] | None = None,
    profile: dict | None = None,
    threat: str | None = None,
    n_boot: int = 2000,
    name: str | None = None,
) -> dict[str, Path]:
    """Average clean accuracy (x) against average robust accuracy (y), one point per method (the paper's Fig. 5).

    Averages run over the datasets common to every plotted method (each needing a clean and a robust record on the
    same images there), so all points average the same datasets; the title says how many. Interpolation (WiSE-FT)
    rows are joined into a curve in order of their alpha, one curve per pair of endpoints. Error bars are 95%
    bootstrap intervals of the averages (:func:`robustbench_zs.results.bootstrap_mean_ci`, seed 0).

    Args:
        df: ``records_frame(out_dir)``.
        out_dir: folder for ``<name>.png`` and ``<name>.csv`` (created if missing).
        methods: method labels, ids or ``label · model`` names to draw (default: all).
        profile: profile fields that pick one profile where the records hold several.
        threat: the robust threat label, e.g. ``"PGD-10 L∞ ε=1/255"``, where the records hold several.
        n_boot: bootstrap replicates of the intervals.
        name: the files' name without suffix (default ``fig5``; ``zsbench reproduce`` names them like its
            Markdown, ``fig5-<profile>``).

    Returns:
        ``{"png": path, "csv": path}``.

    Raises:
        ZSBenchError: no robust records, several profiles or threats and no choice, or no dataset common to all
            methods.
    """
    stem = _stem(name, "fig5")
    fig, table = _fig5_figure(df, methods, profile, threat, n_boot)
    return _save(fig, table, Path(out_dir), stem)


def _fig5_figure(
    df: pd.DataFrame, methods: list[str] | None, profile: dict | None, threat: str | None, n_boot: int
) -> tuple[object, pd.DataFrame]:
    """The figure of :func:`fig5` (not saved) and the table of its numbers."""
    df = _select_methods(df, methods)
    robust = df[df["table"] != "Clean"]
    if robust.empty:
        raise ZSBenchError("fig5 needs records under attack; run `zsbench run` with an attack first")
    robust = _pick_profile(robust, profile)
    threats = sorted(robust["table"].unique())
    if threat is None and len(threats) > 1:
        raise ZSBenchError(f"records under several threats; pass threat= one of: {', '.join(threats)}")
    threat = threat or threats[0]
    if threat not in threats:
        raise ZSBenchError(f"no records under {threat!r}; threats present: {', '.join(threats)}")
    robust = robust[robust["table"] == threat]
    if robust["protocol"].nunique() > 1:
        raise ZSBenchError(f"several {threat} protocols (attack seed or settings differ); filter the records first")
    prof = _profile_of(robust["protocol"].iloc[0])
    clean = df[(df["table"] == "Clean") & (df["protocol"].map(_profile_of) == prof)]
    data = _with_lines(pd.concat([robust, clean]))
    data = _one_subset(data)
    # datasets where a line has both a clean and a robust record (on one set of images, by _one_subset)
    both = data.groupby(["line", "dataset"])["table"].nunique().loc[lambda s: s == 2].index
    per_line: dict[str, set[str]] = {}
    for line, ds in both:
        per_line.setdefault(line, set()).add(ds)
    if not per_line:
        raise ZSBenchError(f"no method has both a clean and a {threat} record on the same images of a dataset")
    common = set.intersection(*per_line.values())
    if not common:
        have = "; ".join(f"{line}: {', '.join(sorted(ds))}" for line, ds in sorted(per_line.items()))
        raise ZSBenchError(f"no dataset has clean and robust records of every method ({have}); pass methods=")
    datasets = _dataset_order(common)
    lines = [line for line in _line_order(data) if line in per_line]
    rows = []
    for line in lines:
        d = data[(data["line"] == line) & data["dataset"].isin(datasets)]
        c = d[d["table"] == "Clean"].set_index("dataset").loc[datasets]
        r = d[d["table"] == threat].set_index("dataset").loc[datasets]
        ci_c = bootstrap_mean_ci(_masks(c), n_boot=n_boot, seed=0)
        ci_r = bootstrap_mean_ci(_masks(r), n_boot=n_boot, seed=0)
        is_interp = (c["method_id"] == "interpolation").all()
        rows.append(
            {
                "method": line,
                "method_id": c["method_id"].iloc[0],
                "curve": _curve_name(line) if is_interp else "",
                "alpha": _alpha(c.iloc[0]) if is_interp else float("nan"),
                "clean_avg": 100 * ci_c.mean,
                "clean_low": 100 * ci_c.low,
                "clean_high": 100 * ci_c.high,
                "robust_avg": 100 * ci_r.mean,
                "robust_low": 100 * ci_r.low,
                "robust_high": 100 * ci_r.high,
                "threat": threat,
                "n_datasets": len(datasets),
                "datasets": ",".join(datasets),
                "n_images": int(c["n"].sum()),
            }
        )
    table = pd.DataFrame(rows)

    points = table[table["curve"] == ""]
    curves = {name: g.sort_values("alpha") for name, g in table[table["curve"] != ""].groupby("curve", sort=False)}
    labels = [*points["method"], *curves]
    colors = _colors(labels)
    width = 6.4
    fig = _new_figure(width, 5.2)
    legend_labels = [*map(_short, points["method"]), *(f"WiSE-FT {_short(n)}, α = 0 → 1" for n in curves)]
    legend_labels, legend_cols, legend_h = _legend_layout(fig, legend_labels, width)
    names = ", ".join(data.drop_duplicates("dataset").set_index("dataset").loc[datasets, "dataset_name"])
    title = _fit(
        fig,
        f"Clean vs robust accuracy, averaged over the {len(datasets)} dataset{'s' * (len(datasets) > 1)} common to "
        f"all methods\n({names}); bars: bootstrap 95% intervals",
        width - 0.3,
        10,
    )
    fig.set_size_inches(width, 4.8 + 0.17 * title.count("\n") + legend_h)
    ax = fig.add_subplot()

    def bars(g: pd.DataFrame) -> dict:
        return {
            "xerr": np.vstack([g["clean_avg"] - g["clean_low"], g["clean_high"] - g["clean_avg"]]),
            "yerr": np.vstack([g["robust_avg"] - g["robust_low"], g["robust_high"] - g["robust_avg"]]),
        }

    handles = []
    for _, p in points.iterrows():
        g = points.loc[[p.name]]
        ax.errorbar(
            g["clean_avg"],
            g["robust_avg"],
            **bars(g),
            fmt="o",
            ms=9,
            mfc="none",
            mew=2,
            color=colors[p["method"]],
            capsize=3,
            elinewidth=1,
            zorder=3,
        )
        # hollow markers: a method that coincides with a point of a curve (clip at alpha 0) stays visible
        handles += ax.plot([], [], "o", ms=9, mfc="none", mew=2, color=colors[p["method"]])
    marks = [(x, y, 9.0) for x, y in zip(points["clean_avg"], points["robust_avg"], strict=True)]
    tags = []
    for name, g in curves.items():
        ax.errorbar(
            g["clean_avg"],
            g["robust_avg"],
            **bars(g),
            fmt="s-",
            ms=5,
            lw=1.5,
            color=colors[name],
            capsize=2,
            elinewidth=0.8,
        )
        handles += ax.plot([], [], "s-", ms=5, color=colors[name])
        # alphas on the same point share one label ("α=0.5, 0.75")
        same: dict[tuple[float, float], list[float]] = {}
        for _, r in g.iterrows():
            same.setdefault((r["clean_avg"], r["robust_avg"]), []).append(r["alpha"])
        for (x, y), alphas in same.items():
            marks.append((x, y, 5))
            tags.append((x, y, "α=" + ", ".join(f"{a:g}" for a in alphas), colors[name]))
    ax.set_xlabel("average clean accuracy (%)")
    ax.set_ylabel(_fit(fig, f"average robust accuracy (%), {threat}", 4.0, 10))
    ax.grid(alpha=0.3)
    ax.margins(0.08)
    fig.suptitle(title, fontsize=10)
    fig.legend(handles, legend_labels, loc="outside lower center", ncol=legend_cols, frameon=False)
    _place_labels(ax, tags, marks)
    return fig, table


#: Where a point's label may go, nearest first: offset from the point (points) and the label's alignment.
_LABEL_SPOTS = [
    (scale * dx, scale * dy, ha, va)
    for scale in (1.0, 2.0, 3.2, 4.5)
    for dx, dy, ha, va in (
        (6, 5, "left", "bottom"),
        (6, -5, "left", "top"),
        (-6, 5, "right", "bottom"),
        (-6, -5, "right", "top"),
        (0, 8, "center", "bottom"),
        (0, -8, "center", "top"),
        (9, 0, "left", "center"),
        (-9, 0, "right", "center"),
    )
]


def _place_labels(ax, tags: list[tuple[float, float, str, tuple]], marks: list[tuple[float, float, float]]) -> list:
    """Annotate each point of ``tags`` (x, y, text, color) at the nearest spot of :data:`_LABEL_SPOTS` where its
    label overlaps no other label and no marker of ``marks`` (x, y, size in points), inside the axes; where no spot
    is free, at the one with the least overlap.

    The figure is laid out first (the labels are then kept out of the layout, so they cannot move the points).
    Returns the annotations.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72
    obstacles = []
    for x, y, size in marks:
        cx, cy = ax.transData.transform((x, y))
        r = size / 2 * px + 1
        obstacles.append(Bbox.from_extents(cx - r, cy - r, cx + r, cy + r))
    inside = ax.bbox

    def overlap(a, b) -> float:
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        return w * h if w > 0 and h > 0 else 0.0

    placed, out = [], []
    for x, y, text, color in tags:
        best = None
        for dx, dy, ha, va in _LABEL_SPOTS:
            a = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=8,
                color=color,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                zorder=4,
            )
            a.set_in_layout(False)
            box = a.get_window_extent(renderer).padded(1)
            cost = sum(overlap(box, o) for o in [*placed, *obstacles])
            cost += box.width * box.height - overlap(box, inside)  # the part outside the axes
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, a, box)
            else:
                a.remove()
            if cost == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out
