"""``zsbench reproduce world``: the PMG-AFT paper in miniature, on the world model and its tasks, on a laptop.

The plan (:data:`PLAN`): zero-shot CLIP (the shipped world model), FT-Standard, TeCoA, PMG-AFT and FARE fine-tuned on
``world-train`` with the paper's recipe scaled to the world (:data:`WORLD_RECIPE`: the optimizer and schedule of
protocol.md section 3, fewer steps and a larger learning rate for a model of a million parameters), and the WiSE-FT
interpolation between CLIP and TeCoA; each evaluated on every world task (:data:`DATASETS`) clean and under PGD-10
at eps 1, 2 and 4 /255, and under standard AutoAttack at eps 1/255 (the paper's Table 3) on a fixed seeded subset of
each task (``aa_n`` images, recorded in every record). Everything runs through ``zsbench run`` (records, reuse,
resumption, leaderboard); then the summary tables (``world-<profile>.md``: averages per method and threat, and per
task) and figures 4 and 5 are written beside the leaderboard.

Whether PMG-AFT keeps more zero-shot accuracy than TeCoA here is what the run measures; nothing here assumes it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..atomic import write_text
from ..attacks import ATTACKS, Threat
from ..engine.runner import RunConfig, run
from ..engine.variants import _split_options, find_checkpoints, wanted_training
from ..errors import ZSBenchError
from ..methods import METHODS
from ..models import ModelSpec
from ..profiles import get_profile, run_config_fields, train_profile_for
from ..report import figures, write_leaderboard
from ..report.compare import compare, render
from ..report.leaderboard import records_frame
from ..world.tasks import TASKS

#: The world model: the shipped weights.
ARCH, PRETRAINED = "zsbench-world", "world"
#: The evaluation columns: every zero-shot task, then world-train's own test split (TinyImageNet's column).
DATASETS = (*(t for t in TASKS if t != "world-train"), "world-train")
#: The training set of every trained row.
TRAIN_DATASET = "world-train"
#: The paper's recipe scaled to the world: the optimizer, momentum, warm-up-then-cosine schedule, batch 256 and 2-step
#: training PGD of protocol.md section 3; 6 epochs of world-train (288 steps) at lr 0.01, warm-up 30 steps, training
#: eps 4/255 in steps of 2/255 (1/255 barely moves a 32-pixel model: the test attacks go to 4/255).
WORLD_RECIPE = {
    "epochs": "6",
    "lr": "0.01",
    "warmup_steps": "30",
    "batch_size": "256",
    "train_eps_255": "4",
    "train_steps": "2",
    "train_step_size_255": "2",
}
#: FARE keeps its own optimizer (AdamW, weight decay 1e-4) and momentum PGD; its scaled learning rate and steps.
FARE_RECIPE = {**WORLD_RECIPE, "lr": "0.001", "train_steps": "2"}
#: WiSE-FT: (1 - alpha) * CLIP + alpha * TeCoA.
ALPHAS = "0.25,0.5,0.75"
EPS_255 = (1, 2, 4)
AA_EPS_255 = 1


@dataclass(frozen=True)
class WorldRow:
    """One row of the plan: a method and its options (recipe fields included)."""

    method: str
    options: dict = field(default_factory=dict)


PLAN: tuple[WorldRow, ...] = (
    WorldRow("clip"),
    WorldRow("ft_standard", {**WORLD_RECIPE, "train_eps_255": "0", "train_steps": "0", "train_step_size_255": "0"}),
    WorldRow("tecoa", WORLD_RECIPE),
    WorldRow("pmg_aft", WORLD_RECIPE),
    WorldRow("fare", FARE_RECIPE),
)
AA_METHODS = ("clip", "tecoa", "pmg_aft")  # the paper's Table 3


def reproduce_world(
    out_dir: Path,
    *,
    profile: str = "standard",
    device: str = "cpu",
    batch_size: int = 256,
    aa_n: int | None = 16,
    n: int | None = 256,
    models_dir: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool | None = None,
    epochs: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Train, evaluate and render the world's paper in miniature under ``out_dir``; returns what was written.

    Args:
        aa_n: images per task for AutoAttack (a seeded subset, recorded; None: the whole split; 0: no AutoAttack).
            Standard AutoAttack costs about 40 s per task and method on 2 CPU cores even for 16 images (its
            components run thousands of iterations on the points still robust), hence the default of 16.
        n: images per task for the other evaluations (a seeded subset, recorded; None: the whole split, 1,024).
        models_dir: where the trained checkpoints go (default ``<out>/models``).
        epochs: training epochs of every trained row (default: the recipe's 6; fewer only for quick checks: the
            epochs are part of each checkpoint's recipe, so such rows never mix with the recipe's).
    """
    out_dir = Path(out_dir)
    models_dir = Path(models_dir) if models_dir is not None else out_dir / "models"
    prof = get_profile(profile)
    model = ModelSpec(ARCH, PRETRAINED)
    pgd = tuple(
        Threat("pgd", "linf", e / 255, 10, 1 / 255, precision=_precision("pgd", prof.attack_precision)) for e in EPS_255
    )
    aa = (
        Threat(
            "autoattack", "linf", AA_EPS_255 / 255, 0, 0.0, precision=_precision("autoattack", prof.attack_precision)
        ),
    )
    common = dict(
        datasets=DATASETS,
        model=model,
        data_root=out_dir,  # the world's datasets are generated; nothing is read from here
        out_dir=out_dir,
        cache_dir=cache_dir,
        device=device,
        batch_size=batch_size,
        progress=progress,
        models_dir=models_dir,
        train_dataset=TRAIN_DATASET,
        **run_config_fields(prof),
    )
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    plan = tuple(
        WorldRow(r.method, {**r.options, "epochs": str(epochs)} if epochs is not None and r.options else r.options)
        for r in PLAN
    )
    for row in plan:
        start = time.perf_counter()
        opts = {row.method: dict(row.options)} if row.options else {}
        run(RunConfig(methods=(row.method,), threats=pgd, n=n, method_options=opts, **common), echo=echo)
        if row.method in AA_METHODS and aa_n != 0:
            run(RunConfig(methods=(row.method,), threats=aa, n=aa_n, method_options=opts, **common), echo=echo)
        timings[row.method] = round(time.perf_counter() - start, 1)
    tecoa = _checkpoint(models_dir, model, "tecoa", plan[2].options, prof)
    start = time.perf_counter()
    interp = {"interpolation": {"alpha": ALPHAS, "theta1": str(tecoa)}}
    run(RunConfig(methods=("interpolation",), threats=pgd, n=n, method_options=interp, **common), echo=echo)
    timings["interpolation"] = round(time.perf_counter() - start, 1)
    timings["total"] = round(time.perf_counter() - t0, 1)
    paths = write_leaderboard(out_dir)
    summary = write_summary(out_dir, profile, timings)
    summary["comparison"] = write_comparison(out_dir, profile)
    return {"leaderboard": paths, **summary, "seconds": timings}


def write_comparison(out_dir: Path, profile: str, a: str = "pmg_aft", b: str = "tecoa") -> Path:
    """``compare-<a>-<b>-<profile>.md``: ``zsbench compare a b`` on the records under ``out_dir`` (every paired
    record, McNemar's test, Holm-corrected), the test behind the question whether PMG-AFT keeps more zero-shot
    accuracy than TeCoA here."""
    text = render(compare(records_frame(out_dir), a, b))
    path = Path(out_dir) / f"compare-{a}-{b}-{profile}.md"
    header = f"# `zsbench compare {a} {b}` on the world ({profile} profile)\n\n```\n"
    write_text(path, header + text.rstrip("\n") + "\n```\n")
    return path


def _precision(attack: str, wanted: str) -> str:
    return wanted if wanted in ATTACKS.get(attack).precisions else "fp32"


def _checkpoint(models_dir: Path, model, method: str, options: dict, prof) -> Path:
    cls = METHODS.get(method)
    config, recipe = _split_options(cls, dict(options))
    config, knobs = wanted_training(cls, train_profile_for(prof), config)
    found = find_checkpoints(
        models_dir,
        method,
        model,
        train_dataset=TRAIN_DATASET,
        config=cls.Config.from_overrides(config).to_dict(),
        recipe=recipe,
        train_knobs=knobs,
    )
    if not found:
        raise ZSBenchError(f"no {method} checkpoint under {models_dir}: its run should have trained one")
    return found[0]


def write_summary(out_dir: Path, profile: str, timings: dict | None = None) -> dict:
    """``world-<profile>.md`` (averages over the zero-shot tasks per method and threat; clean and robust per task),
    ``world-<profile>.csv`` (the same numbers) and figures 4 and 5 (``fig4-world-<profile>.png``,
    ``fig5-world-<profile>.png``, with their CSVs), from the records under ``out_dir``."""
    df = records_frame(out_dir)
    df = df[df["model"].str.startswith(f"{ARCH}/{PRETRAINED}")]
    if df.empty:
        raise ZSBenchError(f"no records of the world model under {out_dir}")
    zero_shot = [d for d in DATASETS if d != TRAIN_DATASET]
    # one number per (row, task, threat): the one on the most images (the clean pass beside AutoAttack's subset is
    # not the clean column), then the newest, as the leaderboard does
    df = df.sort_values(["n", "created_utc"]).drop_duplicates(["method", "dataset", "table"], keep="last")
    df["method"] = df["method"].str.replace(r"theta1=[^,)]*", "theta1=tecoa", regex=True)
    threats = sorted(df["table"].unique(), key=_threat_order)
    rows = sorted(df["method"].unique(), key=_row_order)
    avg = []
    for r in rows:
        line = {"method": r}
        for th in threats:
            cells = df[(df["method"] == r) & (df["table"] == th) & df["dataset"].isin(zero_shot)]
            line[th] = cells["accuracy"].mean() if len(cells) == len(zero_shot) else np.nan
            train = df[(df["method"] == r) & (df["table"] == th) & (df["dataset"] == TRAIN_DATASET)]
            line[f"{th} (world-train)"] = train["accuracy"].iloc[0] if len(train) else np.nan
        avg.append(line)
    avg = pd.DataFrame(avg)
    per_task = df.pivot_table(index=["method", "table"], columns="dataset", values="accuracy").reset_index()
    per_task = per_task[["method", "table", *[d for d in DATASETS if d in per_task.columns]]]
    per_task = per_task.sort_values(
        ["method", "table"], key=lambda s: s.map(_row_order if s.name == "method" else _threat_order)
    )
    subsets = df.groupby("table")["n"].max().to_dict()

    def fmt(v) -> str:
        return "—" if pd.isna(v) else f"{v:.1f}"

    lines = [
        f"# The PMG-AFT paper in miniature: the world model (`{ARCH}/{PRETRAINED}`), profile `{profile}`",
        "",
        "Written by `zsbench reproduce world` from the records beside it (the leaderboard has every number with its "
        "95% interval). Accuracy in %. Trained rows: fine-tuned on world-train (colour-shape pairs of six colours) "
        "with the paper's recipe scaled to the world; zero-shot columns: the 8 world tasks, whose values and "
        "combinations world-train never names.",
        "",
        "## Averages over the 8 zero-shot tasks (and world-train's own test split)",
        "",
        tabulate(
            [[r["method"], *(fmt(r[c]) for c in avg.columns if c != "method")] for _, r in avg.iterrows()],
            headers=["method", *(c for c in avg.columns if c != "method")],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
        "Images per task: " + "; ".join(f"{k}: {v}" for k, v in subsets.items()) + ".",
        "",
        "## Per task",
        "",
        tabulate(
            [[r["method"], r["table"], *(fmt(r[d]) for d in per_task.columns[2:])] for _, r in per_task.iterrows()],
            headers=["method", "threat", *per_task.columns[2:]],
            tablefmt="github",
            disable_numparse=True,
        ),
    ]
    if timings:
        lines += ["", "Wall time (s) per row, training included: " + json.dumps(timings) + "."]
    folder = Path(out_dir)
    md = folder / f"world-{profile}.md"
    write_text(md, "\n".join(lines) + "\n")
    csv = folder / f"world-{profile}.csv"
    write_text(csv, per_task.to_csv(index=False))
    out = {"markdown": md, "csv": csv}
    pgd = df[df["attack"].isin(["pgd", "clean"])]  # the figures draw PGD against eps (AutoAttack is one eps only)
    robust = pgd[pgd["attack"] == "pgd"]
    if not robust.empty:
        out["fig4"] = figures.fig4(pgd, folder, threat=_family(robust), name=f"fig4-world-{profile}")
        eps2 = [t for t in robust["table"].unique() if "ε=2/255" in t]
        threat = eps2[0] if eps2 else robust["table"].iloc[0]
        out["fig5"] = figures.fig5(pgd, folder, threat=threat, name=f"fig5-world-{profile}")
    return out


def _family(robust) -> str:
    return re.sub(r"\s*ε=\S+/255", "", robust["table"].iloc[0]).strip()


def _threat_order(label: str) -> tuple:
    m = re.search(r"ε=(\S+)/255", label)
    return (label != "Clean", "AutoAttack" in label, float(m.group(1)) if m else 0.0, label)


def _row_order(label: str) -> tuple:
    order = [r.method for r in PLAN] + ["interpolation"]
    head = label.split("(")[0].strip()
    return (order.index(head) if head in order else len(order), label)
