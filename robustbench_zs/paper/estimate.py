"""``zsbench reproduce --dry-run``: the missing runs and trainings of a target, priced by measured throughput only.

Evaluation cost: images (protocol.md section 5, ``--n`` or the paper's subsample) times the median measured seconds
per image of the same attack (name, steps, precision) on the same architecture in the records, plus the clean pass
where its record is missing too. Training cost: epochs times training images over the median measured training
images/s of the method on that architecture in the checkpoints' ``meta.json``. Without a measurement a line says
"no measured throughput yet"; no number is guessed. Nothing is run or written.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from ..profiles import PAPER_SUBSAMPLE_BATCH, PAPER_SUBSAMPLE_EVERY, Profile
from .match import load_records, match, missing_cells
from .plan import (
    CHECKPOINT_REF,
    Cell,
    find_checkpoint,
    options_text,
    plan,
    resolve_options,
    resolve_profile,
    split_options,
)
from .render import profile_line
from .targets import dataset_images, get_target, train_images

NO_THROUGHPUT = "no measured throughput yet"


def eval_images(dataset: str, n: int | None, paper_subsample: bool) -> int | None:
    """Images one evaluation of ``dataset`` covers: the split (protocol.md section 5), ``--n`` or the subsample."""
    total = dataset_images(dataset)
    if total is None:
        return None
    if paper_subsample:
        batches = math.ceil(total / PAPER_SUBSAMPLE_BATCH)
        return sum(
            min(PAPER_SUBSAMPLE_BATCH, total - b * PAPER_SUBSAMPLE_BATCH)
            for b in range(0, batches, PAPER_SUBSAMPLE_EVERY)
        )
    return total if n is None else min(n, total)


def measured_eval_rates(records: list[tuple[Path, dict]], arch: str) -> dict[tuple[str, int, str], float]:
    """Median seconds per image of each (attack, steps, precision) in the records of ``arch`` (clean: steps 0).

    Args:
        records: :func:`~robustbench_zs.paper.match.load_records` of a results folder.
    """
    samples: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for _, r in records:
        wall, n = (r.get("run") or {}).get("wall_time_s"), r["result"].get("n")
        if r["model"].get("arch") != arch or not wall or not n:
            continue
        a = r["attack"]
        samples[_rate_key(a.get("name", "clean"), a.get("steps", 0), a.get("precision", "fp32"))].append(wall / n)
    return {k: statistics.median(v) for k, v in samples.items()}


def _rate_key(name: str, steps: int | None, precision: str | None) -> tuple[str, int, str]:
    """What makes attacks cost the same per image: name, steps and precision (clean: one forward pass)."""
    if name == "clean":
        return ("clean", 0, "fp32")
    return (name, int(steps or 0), precision or "fp32")


def measured_train_rates(models_dir: Path, arch: str) -> dict[str, float]:
    """Median training images/s per method in the checkpoints' ``meta.json`` of ``arch`` under ``models_dir``."""
    samples: dict[str, list[float]] = defaultdict(list)
    for meta_path in sorted(Path(models_dir).glob("*/meta.json")):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        ips = meta.get("images_per_second")
        if meta.get("arch") == arch and ips:
            samples[str(meta.get("method"))].append(float(ips))
    return {k: statistics.median(v) for k, v in samples.items()}


def _duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3.5 h``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


@dataclass(frozen=True)
class Training:
    """A checkpoint the plan needs and the models folder lacks."""

    method: str
    options: tuple[tuple[str, str], ...]
    train_dataset: str


def needed_trainings(
    cells: Iterable[Cell], models_dir: Path, arch: str, pretrained: str
) -> tuple[list[Training], list[Cell]]:
    """The trainings the cells need (no matching checkpoint yet), and the cells that wait for another's checkpoint.

    Options that refer to a checkpoint (``@checkpoint:tecoa``) wait for that checkpoint; they add no training of
    their own, since the target's own row of that method trains it.
    """
    from ..methods import METHODS

    trainings: dict[Training, None] = {}
    waits: dict[tuple, bool] = {}  # per variant: waits for another's checkpoint
    waiting = []
    for c in cells:
        if c.variant not in waits:
            waits[c.variant] = False
            if any(isinstance(v, str) and v.startswith(CHECKPOINT_REF) for _, v in c.options):
                waits[c.variant] = resolve_options(c.options, models_dir, c.train_dataset, arch, pretrained) is None
            elif METHODS.get(c.method).trains != "nothing" and (
                find_checkpoint(models_dir, c.method, dict(c.options), c.train_dataset, arch, pretrained) is None
            ):
                trainings[Training(c.method, c.options, c.train_dataset)] = None
        if waits[c.variant]:
            waiting.append(c)
    return list(trainings), waiting


def dry_run_report(
    target: str,
    out_dir: Path,
    profile: str | Profile = "paper",
    *,
    arch: str = "ViT-B-32",
    pretrained: str = "openai",
    models_dir: Path = Path("models"),
    n: int | None = None,
    paper_subsample: bool | None = None,
) -> str:
    """What ``zsbench reproduce TARGET`` would run, with its estimated cost; reads records and checkpoints only.

    Evaluation cost: images times the median measured seconds per image of the same attack (name, steps,
    precision) on ``arch`` in the records, plus the clean pass where its record is missing too. Training cost:
    epochs times training images over the median measured images/s of the method on ``arch`` in the checkpoints'
    ``meta.json``. Without a measurement the line says so; no number is guessed.
    """
    from ..attacks import Threat
    from ..methods import METHODS
    from ..train.engine import resolve_recipe

    t = get_target(target)
    prof = resolve_profile(profile, paper_subsample)
    cells = plan(target, prof)
    records = load_records(Path(out_dir))
    # a robust run evaluates the clean images first unless their record exists: match those cells too
    cleans = [c.clean() for c in cells if c.metric == "robust"]
    kw = dict(arch=arch, pretrained=pretrained, models_dir=models_dir, n=n, paper_subsample=prof.paper_subsample)
    found = match([*cells, *cleans], out_dir, prof, records=records, **kw)
    todo = missing_cells({c: found[c] for c in cells})
    runs: dict[tuple, dict] = {}
    for c in todo:
        passes = runs.setdefault((c.variant, c.dataset), {"cell": c, "threats": {}})["threats"]
        if c.metric == "robust" and ((f := found.get(c.clean())) is None or not f.complete):
            passes[Threat()] = None
        passes[c.threat] = None
    eval_rates = measured_eval_rates(records, arch)
    train_rates = measured_train_rates(models_dir, arch)
    trainings, waiting = needed_trainings(todo, models_dir, arch, pretrained)

    labels = {r.key: r.label for r in t.rows}
    total, unmeasured, rows = 0.0, 0, []
    for i, run in enumerate(runs.values(), 1):
        c = run["cell"]
        passes = sorted(run["threats"], key=lambda th: not th.is_clean)
        images = eval_images(c.dataset, n, prof.paper_subsample)
        rates = [eval_rates.get(_rate_key(p.name, p.steps, p.precision)) for p in passes]
        if images is None or any(r is None for r in rates):
            estimate = NO_THROUGHPUT
            unmeasured += 1
        else:
            seconds = images * sum(rates)
            total += seconds
            estimate = _duration(seconds)
        rows.append(
            [
                i,
                labels[c.row],
                c.method,
                options_text(c.options),
                c.train_dataset if METHODS.get(c.method).trains != "nothing" else "—",
                c.dataset,
                " + ".join(p.label for p in passes),
                "?" if images is None else f"{images:,}",
                estimate,
            ]
        )
    train_rows, train_total, train_unmeasured = [], 0.0, 0
    for tr in trainings:
        cls = METHODS.get(tr.method)
        _, recipe_opts = split_options(tr.method, dict(tr.options))
        recipe = resolve_recipe(cls, {k: type(getattr(cls.recipe, k))(v) for k, v in recipe_opts.items()})
        per_epoch = train_images(tr.train_dataset)
        images = None if per_epoch is None else recipe.epochs * (per_epoch // recipe.batch_size) * recipe.batch_size
        ips = train_rates.get(tr.method)
        if images is None or ips is None:
            estimate = NO_THROUGHPUT
            train_unmeasured += 1
        else:
            train_total += images / ips
            estimate = _duration(images / ips)
        train_rows.append(
            [
                tr.method,
                options_text(tr.options),
                tr.train_dataset,
                recipe.epochs,
                "?" if images is None else f"{images:,}",
                estimate,
            ]
        )

    lines = [
        f"# Dry run: zsbench reproduce {t.id} ({profile_line(prof)}; {arch}/{pretrained})",
        "",
        f"Records: {out_dir}; checkpoints: {models_dir}. Nothing was run or written.",
        "",
        f"{len(cells) - len(todo)} of {len(cells)} cells have a record; {len(runs)} evaluation runs are missing; "
        f"{len(trainings)} trainings are needed.",
    ]
    if rows:
        lines += [
            "",
            "## Evaluation runs",
            "",
            tabulate(
                rows,
                headers=["#", "row", "method", "options", "trained on", "dataset", "attack", "images", "estimate"],
                tablefmt="github",
                disable_numparse=True,
            ),
        ]
    if train_rows:
        lines += [
            "",
            "## Trainings",
            "",
            tabulate(
                train_rows,
                headers=["method", "options", "train set", "epochs", "images", "estimate"],
                tablefmt="github",
                disable_numparse=True,
            ),
        ]
    if waiting:
        lines += [
            "",
            f"{len({(c.variant, c.dataset) for c in waiting})} runs use a checkpoint that does not exist yet "
            "(trained by this plan's own rows first).",
        ]
    lines += ["", "## Estimated cost", ""]
    measured = len(rows) - unmeasured
    lines.append(
        f"- evaluation: {_duration(total)} for the {measured} runs with measured throughput"
        + (f"; {unmeasured} runs: {NO_THROUGHPUT}" if unmeasured else "")
        + "."
    )
    if train_rows:
        lines.append(
            f"- training: {_duration(train_total)} for the {len(train_rows) - train_unmeasured} trainings with "
            f"measured throughput" + (f"; {train_unmeasured}: {NO_THROUGHPUT}" if train_unmeasured else "") + "."
        )
    lines.append(
        "- rates: median seconds per image of the same attack, steps and precision on this architecture in the "
        "records (device and batch size as measured); training images/s of the same method in the checkpoints."
    )
    return "\n".join(lines) + "\n"
