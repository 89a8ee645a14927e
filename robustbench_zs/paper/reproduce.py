"""``zsbench reproduce``: a table or figure of the PMG-AFT paper, our numbers beside the paper's.

:func:`reproduce` plans the target's cells (:mod:`.plan`), finds their records (:mod:`.match`), runs what is missing
through ``engine.runner.run`` (one ``RunConfig`` per group of runs sharing a method variant, training set and
threats; trainings happen there, through the runner's ``train_missing``), then writes the Markdown of
:mod:`.render` to ``<out>/reproduce/<target>-<profile>[-subsample].md`` and, for figures, draws them with
``robustbench_zs.report.figures`` beside it under the same name (``.png``, and ``.csv`` for the plotted numbers). Runs
whose dataset is not under the data root, or whose checkpoint is missing under ``--no-train``, are skipped with one
line each and shown as missing.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text
from ..datasets import DATASETS
from ..engine.runner import RunConfig, run
from ..errors import ZSBenchError
from ..methods import METHODS
from ..models import ModelSpec
from ..profiles import Profile, run_config_fields, train_profile_for
from ..report import figures, write_leaderboard
from ..report.leaderboard import records_frame
from ..results import ensure_writable
from .match import match, missing_cells
from .plan import (
    Cell,
    expected_train_eps,
    find_checkpoint,
    options_text,
    paper_threat,
    plan,
    resolve_options,
    resolve_profile,
)
from .render import render
from .targets import Target, get_target


def dataset_available(dataset: str, data_root: Path) -> bool:
    """Cheap check that a dataset's folder is under the data root (the loader reports a wrong layout later)."""
    spec = DATASETS.get(dataset)
    return not spec.needs_root or (spec.folder is not None and (Path(data_root) / spec.folder).exists())


@dataclass(frozen=True)
class ReproduceResult:
    """What :func:`reproduce` did.

    Attributes:
        markdown, text: the file written and its text.
        written: records written by this call.
        skipped: one line per run skipped (dataset absent, checkpoint missing under ``--no-train``).
        figure: for figures, its files or why it was not drawn.
    """

    markdown: Path
    text: str
    written: int
    skipped: list[str]
    figure: list[str]


def _groups(cells: list[Cell]) -> list[tuple[tuple, tuple, list[str]]]:
    """Missing cells grouped for ``run``: (variant, non-clean threats, datasets), in the plan's order."""
    per_dataset: dict[tuple, dict[str, dict]] = defaultdict(dict)  # variant -> dataset -> {threat: None}
    for c in cells:
        threats = per_dataset[c.variant].setdefault(c.dataset, {})
        if c.metric == "robust":
            threats[c.threat] = None
    out: dict[tuple[tuple, tuple], list[str]] = {}
    for variant, datasets in per_dataset.items():
        for ds, threats in datasets.items():
            out.setdefault((variant, tuple(threats)), []).append(ds)
    return [(v, th, ds) for (v, th), ds in out.items()]


def reproduce(
    target: str,
    *,
    profile: str | Profile = "paper",
    out_dir: Path,
    data_root: Path,
    models_dir: Path,
    arch: str = "ViT-B-32",
    pretrained: str = "openai",
    device: str = "auto",
    batch_size: int = 256,
    n: int | None = None,
    paper_subsample: bool | None = None,
    train: bool = True,
    progress: bool | None = None,
    cache_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> ReproduceResult:
    """Run what ``target`` still lacks, then write ``<out>/reproduce/<target>-<profile>.md`` and return it.

    Runs are skipped, each with one line saying why, where their dataset is not under ``data_root`` or (with
    ``train=False``) their checkpoint does not exist; the table then shows those cells as missing.
    """
    t = get_target(target)
    prof = resolve_profile(profile, paper_subsample)
    train_prof = train_profile_for(prof)
    out_dir, models_dir, data_root = Path(out_dir), Path(models_dir), Path(data_root)
    kw = dict(
        arch=arch,
        pretrained=pretrained,
        models_dir=models_dir,
        n=n,
        paper_subsample=prof.paper_subsample,
        batch_size=batch_size,
    )
    cells = plan(target, prof)
    todo = missing_cells(match(cells, out_dir, prof, **kw))
    ensure_writable(out_dir)
    skipped: list[str] = []
    absent = sorted({c.dataset for c in todo if not dataset_available(c.dataset, data_root)})
    if absent:
        skipped.append(
            f"not under {data_root}: {', '.join(absent)} (see zsbench datasets check --data-root {data_root})"
        )
    written = 0
    for (method, options, train_dataset), threats, datasets in _groups(todo):
        datasets = [d for d in datasets if d not in absent]
        if not datasets:
            continue
        resolved = resolve_options(options, models_dir, train_dataset, arch, pretrained, train_prof)
        label = f"{method}({options_text(options)})" if options else method
        if resolved is None:
            skipped.append(f"{label}: the checkpoint it interpolates to does not exist")
            continue
        if (
            not train
            and METHODS.get(method).trains != "nothing"
            and find_checkpoint(models_dir, method, resolved, train_dataset, arch, pretrained, train_prof) is None
        ):
            skipped.append(f"{label}: no checkpoint trained on {train_dataset} in {models_dir} (--no-train)")
            continue
        if METHODS.get(method).trains != "nothing":
            # pin the training eps, so that the run picks (or trains) the checkpoint this row needs, as the plan did
            resolved = {**resolved, "train_eps_255": str(expected_train_eps(method, resolved))}
        cfg = RunConfig(
            methods=(method,),
            datasets=tuple(datasets),
            model=ModelSpec(arch, pretrained),
            threats=threats,
            data_root=data_root,
            out_dir=out_dir,
            n=n,
            cache_dir=cache_dir,
            device=device,
            batch_size=batch_size,
            progress=progress,
            method_options={method: resolved} if resolved else {},
            models_dir=models_dir,
            train_dataset=train_dataset,
            train_missing=train,
            **run_config_fields(prof),
        )
        written += len(run(cfg, echo=echo).written)
    if written:
        write_leaderboard(out_dir)
    for line in skipped:
        echo(f"skipped: {line}")
    found = match(cells, out_dir, prof, **kw)
    loose = match(cells, out_dir, prof, **kw, check_training=False)
    other_knobs = [c for c in cells if found.get(c) is None and loose.get(c) is not None]
    unused = []
    if other_knobs:
        rows = ", ".join(sorted({c.row for c in other_knobs}))
        unused.append(
            f"Not used: {len(other_knobs)} cells (rows {rows}) have records of checkpoints trained with other knobs "
            f"than the {train_prof.name} training profile; they are shown as missing here and marked ⚑ in "
            "zsbench leaderboard."
        )
        echo(f"note: {unused[0]}")
    folder = out_dir / "reproduce"
    folder.mkdir(parents=True, exist_ok=True)
    stem = output_stem(t, profile, prof)
    figure = _draw_figure(t, out_dir, folder, prof, stem) if t.figure else []
    extra = [*(f"Skipped: {s}." for s in skipped), *unused, *figure]
    text = render(target, found, prof, arch=arch, pretrained=pretrained, models_dir=models_dir, extra=extra)
    path = folder / f"{stem}.md"
    write_text(path, text)
    return ReproduceResult(path, text, written, skipped, figure)


def output_stem(t: Target, profile: str | Profile, prof: Profile) -> str:
    """The name, without suffix, of what ``reproduce`` writes for a target: ``<target>-<profile>[-subsample]``.

    The Markdown and, for figures, the PNG and CSV share it, so runs under other profiles never overwrite them.

    Args:
        profile: the profile as asked for (its name is used); prof: the resolved profile (its paper subsample).
    """
    base = profile if isinstance(profile, str) else prof.name
    return f"{t.id}-{base}{'-subsample' if prof.paper_subsample else ''}"


def _draw_figure(t: Target, out_dir: Path, folder: Path, prof: Profile, stem: str) -> list[str]:
    """Draw a figure target with ``robustbench_zs.report.figures`` into ``folder`` as ``<stem>.png`` and ``<stem>.csv``;
    returns lines for the Markdown.

    The figure functions pick the records of this profile's knobs and of the target's threat (fig4: the threat
    family, its label without the radius; the attack's precision is part of it); a figure that cannot be drawn yet
    (no records) says why in one line.
    """
    spec = dict(t.figure or {})
    fn = getattr(figures, spec.pop("function"))
    along_eps = spec.pop("along_eps", False)
    df = records_frame(out_dir)
    if "methods" in spec and not df.empty:  # draw the methods measured so far
        spec["methods"] = [m for m in spec["methods"] if m in set(df["method_id"])]
    if df.empty or spec.get("methods") == []:
        return ["Figure not drawn: no records yet."]
    knobs = {
        "normalization": prof.normalization,
        "logit_scale": prof.logit_scale,
        "prompts": prof.prompts,
        "paper_subsample": prof.paper_subsample,
    }
    label = paper_threat(t.attack, float(t.rows[0].eps_255), prof).label
    threat = re.sub(r"\s*ε=\S+/255", "", label).strip() if along_eps else label
    try:
        paths = fn(df, folder, profile=knobs, threat=threat, name=stem, **spec)
    except ZSBenchError as e:
        return [f"Figure not drawn: {e}."]
    return [f"Figure: {paths['png']} (its numbers: {paths['csv']})."]
