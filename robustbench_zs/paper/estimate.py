"""``zsbench reproduce --dry-run``: the missing runs and trainings of a target, priced by measured throughput only.

Evaluation cost: images (protocol.md section 5, ``--n`` or the paper's subsample) times the median measured seconds
per image of the same attack (name, steps, precision) on the same architecture in the records, plus the clean pass
where its record is missing too. Rates come from the records computed on this machine's hardware (the same device
name and count in their ``run.cost``, :func:`this_hardware`) when there are such records, which also price the
plan's GPU-hours (or CPU core-hours); otherwise from the records of any device (the fallback: time only, as
measured). Training cost: epochs times training images over the median measured training images/s of the method on
that architecture in the checkpoints' ``meta.json``. Without a measurement a line says "no measured throughput
yet"; no number is guessed. Nothing is run or written.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tabulate import tabulate

from ..attacks import Threat
from ..datasets import DATASETS
from ..datasets.preprocess import resolve_preprocess
from ..engine.runner import attack_settings, model_identity
from ..engine.variants import _split_options, wanted_training
from ..methods import METHODS
from ..models import ModelSpec
from ..models.loader import model_preprocess_cfg
from ..profiles import (
    PAPER_SUBSAMPLE_BATCH,
    PAPER_SUBSAMPLE_EVERY,
    Profile,
    TrainProfile,
    profile_family,
    train_profile_for,
)
from ..provenance import device_name
from ..results import Record
from ..results.cost import UNITS, format_device_hours, format_hours, hardware_label, read_cost
from ..train.engine import effective_profile, resolve_recipe, steps_per_epoch
from .match import load_records, match, missing_cells
from .plan import (
    CHECKPOINT_REF,
    Cell,
    find_checkpoint,
    official,
    options_text,
    plan,
    resolve_options,
    resolve_profile,
    split_options,
)
from .render import profile_line, train_profile_line
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


def measured_eval_rates(records: list[Record], arch: str) -> dict[tuple[str, int, str], float]:
    """Median seconds per image of each (attack, steps, precision) in the records of ``arch`` (clean: steps 0).

    Args:
        records: :func:`~robustbench_zs.paper.match.load_records` of a results folder.
    """
    samples: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in records:
        wall, n = r.run.get("wall_time_s"), r.n
        if r.model.get("arch") != arch or not wall or not n:
            continue
        a = r.attack
        samples[_rate_key(a.get("name", "clean"), a.get("steps", 0), a.get("precision", "fp32"))].append(wall / n)
    return {k: statistics.median(v) for k, v in samples.items()}


def this_hardware(device: str = "auto") -> tuple[str, str, int] | None:
    """The hardware a run here would use, as a record's ``run.cost`` names it: (device type, device name, device
    count). ``cuda``/``auto`` with a GPU: this GPU, one per process (``WORLD_SIZE`` under torchrun); the CPU: its
    model and torch's threads per process. None where ``device`` names a GPU this machine lacks (or is unknown)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if device in ("auto", "cuda") or device.startswith("cuda:"):
        if torch.cuda.is_available():
            dev = torch.device("cuda" if device == "auto" else device)
            return ("cuda", device_name(dev), world)
        if device != "auto":
            return None
        device = "cpu"
    if device == "cpu":
        return ("cpu", device_name(torch.device("cpu")), world * torch.get_num_threads())
    return None


@dataclass
class HardwareRates:
    """Rates measured on one hardware: per (attack, steps, precision), the median seconds per image and the median
    device hours per image (in ``unit``), from ``records`` records; ``skipped``: records of the architecture whose
    cost block could not be read (file -> why)."""

    hardware: tuple[str, str, int] | None
    unit: str
    seconds: dict[tuple[str, int, str], float]
    hours: dict[tuple[str, int, str], float]
    records: int
    without_cost: int
    skipped: dict[str, str]

    @property
    def label(self) -> str:
        return "unknown" if self.hardware is None else hardware_label(*self.hardware)


def hardware_eval_rates(records: list[Record], arch: str, hardware: tuple[str, str, int] | None) -> HardwareRates:
    """Median seconds and device hours per image of each (attack, steps, precision) in the records of ``arch``
    computed on ``hardware`` (:func:`this_hardware`), from their ``run.cost`` (wall seconds of every attempt).

    Records without a cost block (written before costs were recorded) are counted in ``without_cost``; records with
    an unreadable one in ``skipped``, with the reason. Neither stops the estimate.
    """
    unit = UNITS["cpu_core_hours"] if hardware is not None and hardware[0] == "cpu" else UNITS["gpu_hours"]
    seconds: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    hours: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    used, without, skipped = 0, 0, {}
    for r in records:
        if r.model.get("arch") != arch:
            continue
        cost, why = read_cost(r)
        if cost is None:
            if why == "no cost block":
                without += 1
            else:
                skipped[str(r.path)] = why or "unreadable"
            continue
        if hardware is None or tuple(cost["hardware_key"]) != tuple(hardware) or not cost["images"]:
            continue
        if not cost["wall_s"] or unit not in cost["hours"]:
            continue
        a = r.attack
        key = _rate_key(a.get("name", "clean"), a.get("steps", 0), a.get("precision", "fp32"))
        seconds[key].append(cost["wall_s"] / cost["images"])
        hours[key].append(cost["hours"][unit] / cost["images"])
        used += 1
    return HardwareRates(
        hardware,
        unit,
        {k: statistics.median(v) for k, v in seconds.items()},
        {k: statistics.median(v) for k, v in hours.items()},
        used,
        without,
        skipped,
    )


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


def epoch_images(n: int | None, batch_size: int, profile: TrainProfile) -> int | None:
    """Images one training epoch of ``n`` images sees: all of them with the last batch kept, else the full batches."""
    if n is None:
        return None

    steps = steps_per_epoch(n, batch_size, profile.last_batch)
    return min(n, steps * batch_size)


@dataclass(frozen=True)
class Training:
    """A checkpoint the plan needs and the models folder lacks."""

    method: str
    options: tuple[tuple[str, str], ...]
    train_dataset: str


def needed_trainings(
    cells: Iterable[Cell], models_dir: Path, arch: str, pretrained: str, train_profile: TrainProfile | None = None
) -> tuple[list[Training], list[Cell]]:
    """The trainings the cells need (no matching checkpoint yet), and the cells that wait for another's checkpoint.

    Options that refer to a checkpoint (``@checkpoint:tecoa``) wait for that checkpoint; they add no training of
    their own, since the target's own row of that method trains it.
    """
    trainings: dict[Training, None] = {}
    waits: dict[tuple, bool] = {}  # per variant: waits for another's checkpoint
    waiting = []
    for c in cells:
        if c.variant not in waits:
            waits[c.variant] = False
            if any(isinstance(v, str) and v.startswith(CHECKPOINT_REF) for _, v in c.options):
                resolved = resolve_options(c.options, models_dir, c.train_dataset, arch, pretrained, train_profile)
                waits[c.variant] = resolved is None
            elif METHODS.get(c.method).trains != "nothing" and (
                find_checkpoint(models_dir, c.method, dict(c.options), c.train_dataset, arch, pretrained, train_profile)
                is None
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
    batch_size: int | None = None,
    device: str = "auto",
    hardware: tuple[str, str, int] | None = None,
) -> str:
    """What ``zsbench reproduce TARGET`` would run, with its estimated cost; reads records and checkpoints only.

    Evaluation cost: images times the median measured seconds per image of the same attack (name, steps,
    precision) on ``arch`` in the records, plus the clean pass where its record is missing too. A run whose passes
    were all measured on ``hardware`` (default: this machine's with ``device``, :func:`this_hardware`) is priced
    from those records alone, in time and device hours (GPU-hours, or CPU core-hours); the others fall back to the
    records of any device, in time only, and the report says which is which. Training cost: epochs times training
    images over the median measured images/s of the method on ``arch`` in the checkpoints' ``meta.json``. Without a
    measurement the line says so; no number is guessed.
    """
    t = get_target(target)
    prof = resolve_profile(profile, paper_subsample)
    train_prof = train_profile_for(prof)
    cells = plan(target, prof)
    records = load_records(Path(out_dir))
    # a robust run evaluates the clean images first unless their record exists: match those cells too
    cleans = [c.clean() for c in cells if c.metric == "robust"]
    kw = dict(
        arch=arch,
        pretrained=pretrained,
        models_dir=models_dir,
        n=n,
        paper_subsample=prof.paper_subsample,
        batch_size=batch_size,
    )
    found = match([*cells, *cleans], out_dir, prof, records=records, **kw)
    todo = missing_cells({c: found[c] for c in cells})
    runs: dict[tuple, dict] = {}
    for c in todo:
        passes = runs.setdefault((c.variant, c.dataset), {"cell": c, "threats": {}})["threats"]
        if c.metric == "robust" and ((f := found.get(c.clean())) is None or not f.complete):
            passes[Threat()] = None
        passes[c.threat] = None
    eval_rates = measured_eval_rates(records, arch)
    same = hardware_eval_rates(records, arch, hardware if hardware is not None else this_hardware(device))
    train_rates = measured_train_rates(models_dir, arch)
    trainings, waiting = needed_trainings(todo, models_dir, arch, pretrained, train_prof)

    labels = {r.key: r.label for r in t.rows}
    total, unmeasured, rows = 0.0, 0, []
    priced = {"same": [0, 0.0, 0.0], "fallback": [0, 0.0]}  # runs, seconds (and device hours) by where rates came from
    for i, run in enumerate(runs.values(), 1):
        c = run["cell"]
        passes = sorted(run["threats"], key=lambda th: not th.is_clean)
        images = eval_images(c.dataset, n, prof.paper_subsample)
        keys = [_rate_key(p.name, p.steps, p.precision) for p in passes]
        rates = [eval_rates.get(k) for k in keys]
        source, device_hours = "—", "—"
        if images is not None and all(k in same.seconds for k in keys):
            seconds = images * sum(same.seconds[k] for k in keys)
            hours = images * sum(same.hours[k] for k in keys)
            total += seconds
            priced["same"][0] += 1
            priced["same"][1] += seconds
            priced["same"][2] += hours
            source, device_hours, estimate = "this hardware", f"{format_hours(hours)} {same.unit}", _duration(seconds)
        elif images is None or any(r is None for r in rates):
            estimate = NO_THROUGHPUT
            unmeasured += 1
        else:
            seconds = images * sum(rates)
            total += seconds
            priced["fallback"][0] += 1
            priced["fallback"][1] += seconds
            source, estimate = "fallback", _duration(seconds)
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
                source,
                device_hours,
                estimate,
            ]
        )
    train_rows, train_total, train_unmeasured = [], 0.0, 0
    for tr in trainings:
        cls = METHODS.get(tr.method)
        _, recipe_opts = split_options(tr.method, dict(tr.options))
        recipe = resolve_recipe(cls, {k: type(getattr(cls.recipe, k))(v) for k, v in recipe_opts.items()})
        images = epoch_images(train_images(tr.train_dataset), recipe.batch_size, effective_profile(cls, train_prof))
        images = None if images is None else recipe.epochs * images
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
        f"Trainings use the {train_profile_line(prof)}; every knob of every run: `--dry-run --json`.",
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
                headers=[
                    "#",
                    "row",
                    "method",
                    "options",
                    "trained on",
                    "dataset",
                    "attack",
                    "images",
                    "rates from",
                    "device hours",
                    "estimate",
                ],
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
    lines += _hardware_lines(same, priced, device)
    lines.append(
        "- rates: median seconds per image of the same attack, steps and precision on this architecture in the "
        "records (device and batch size as measured); training images/s of the same method in the checkpoints."
    )
    return "\n".join(lines) + "\n"


def _hardware_lines(same: HardwareRates, priced: dict, device: str) -> list[str]:
    """Where the evaluation rates came from: this machine's hardware (how many records, time and device hours), or
    the fallback (records of any device: time only); and the records whose cost could not be used."""
    runs, seconds, hours = priced["same"]
    lines = []
    if same.hardware is None:
        lines.append(
            f"- hardware: --device {device} is not on this machine, so no record is matched to its hardware; "
            "every time above is the fallback (the records of any device), and no device hours are estimated."
        )
    elif not same.records:
        lines.append(
            f"- hardware: no record of this architecture was computed on this machine's hardware ({same.label}); "
            "every time above is the fallback (the records of any device, device and batch size as measured), "
            "and no device hours are estimated."
        )
    else:
        lines.append(
            f"- hardware: {runs} runs priced from {_n_records(same.records)} computed on this machine's hardware "
            f"({same.label}): {_duration(seconds)}, {format_device_hours({'hours': {same.unit: hours}})}."
        )
        if priced["fallback"][0]:
            lines.append(
                f"- fallback: {priced['fallback'][0]} runs whose attack was not measured on this hardware are priced "
                f"from the records of any device: {_duration(priced['fallback'][1])}, no device hours."
            )
    if same.without_cost:
        lines.append(
            f"- {_n_records(same.without_cost)} without a cost block (written before costs were recorded) price the "
            "fallback only."
        )
    if same.skipped:
        shown = "; ".join(f"{p}: {why}" for p, why in sorted(same.skipped.items())[:3])
        more = f" and {len(same.skipped) - 3} more" if len(same.skipped) > 3 else ""
        lines.append(f"- {_n_records(len(same.skipped))} with an unreadable cost block skipped ({shown}{more}).")
    return lines


def _n_records(n: int) -> str:
    return f"{n} record{'s' if n != 1 else ''}"


def dry_run_plan(
    target: str,
    out_dir: Path,
    profile: str | Profile = "paper",
    *,
    arch: str = "ViT-B-32",
    pretrained: str = "openai",
    models_dir: Path = Path("models"),
    n: int | None = None,
    paper_subsample: bool | None = None,
    batch_size: int = 256,
) -> dict:
    """The whole plan of ``zsbench reproduce TARGET``, knob by knob (``--dry-run --json``); reads records only.

    One entry per run (a row's method variant on one dataset, with every threat the row needs there), whether its
    records exist or not, holding everything that decides its numbers: the method and its resolved config (the
    row's options plus, under ``paper``, the official code's: ``official_options`` with their source), the
    training (training set, the resolved recipe, the training profile's knobs as they train this method, the
    training images' preprocessing, steps per epoch and in all, the checkpoint that would be used), and the
    evaluation (dataset, images and how they are chosen, preprocessing, profile knobs, batch size, and each
    threat's full settings as its record's key holds them). A reader compares it line by line with the official
    scripts.
    """
    t = get_target(target)
    prof = resolve_profile(profile, paper_subsample)
    train_prof = train_profile_for(prof)
    cells = plan(target, prof)
    records = load_records(Path(out_dir))
    kw = dict(arch=arch, pretrained=pretrained, models_dir=models_dir, n=n, paper_subsample=prof.paper_subsample)
    found = match(cells, out_dir, prof, records=records, batch_size=batch_size, **kw)
    model = ModelSpec(arch, pretrained)
    needs_model_cfg = prof.preprocess == "standard" or train_prof.preprocess == "standard"
    model_cfg = model_preprocess_cfg(model) if needs_model_cfg else None
    rows = {r.key: r for r in t.rows}
    runs: dict[tuple, dict] = {}
    for c in cells:
        key = (c.variant, c.row, c.dataset)
        if key not in runs:
            row, cls = rows[c.row], METHODS.get(c.method)
            options = dict(c.options)
            config_opts, recipe_opts = _split_options(cls, options)
            training = None
            if cls.trains != "nothing":
                config_opts, _ = wanted_training(cls, train_prof, config_opts)
                eff = effective_profile(cls, train_prof)
                recipe = resolve_recipe(cls, recipe_opts)
                spec = DATASETS.get(c.train_dataset)
                per_epoch_images = train_images(c.train_dataset)
                steps = (
                    None
                    if per_epoch_images is None
                    else steps_per_epoch(per_epoch_images, recipe.batch_size, eff.last_batch)
                )
                path = find_checkpoint(models_dir, c.method, options, c.train_dataset, arch, pretrained, train_prof)
                training = {
                    "train_dataset": c.train_dataset,
                    "train_images": per_epoch_images,
                    "recipe": recipe.to_dict(),
                    "knobs": eff.to_dict(),
                    "attack_mode_fixed_by_method": cls.train_attack_mode,
                    "preprocess": resolve_preprocess(eff.preprocess, spec, model_cfg, train=True).describe(spec),
                    "steps_per_epoch": steps,
                    "total_steps": None if steps is None else steps * recipe.epochs,
                    "checkpoint": None if path is None else str(path),
                }
            spec = DATASETS.get(c.dataset)
            images = eval_images(c.dataset, n, prof.paper_subsample)
            runs[key] = {
                "row": c.row,
                "label": row.label,
                "method": c.method,
                "options": options,
                "official_options": dict(row.official_options) if official(prof) else {},
                "official_source": row.official_source if official(prof) and row.official_options else "",
                "official_note": row.official_note if official(prof) and row.official_options else "",
                "method_config": cls.Config.from_overrides(config_opts).to_dict(),
                "base_model": model_identity(model),
                "training": training,
                "evaluation": {
                    "dataset": c.dataset,
                    "split": spec.eval_split,
                    "images": images,
                    "selection": "paper_subsample" if prof.paper_subsample else ("all" if n is None else "random"),
                    "profile": {"name": prof.name, **prof.knobs()},
                    "preprocess": resolve_preprocess(prof.preprocess, spec, model_cfg).describe(spec),
                    "batch_size": batch_size,
                    "threats": [attack_settings(Threat(), batch_size)],  # every run evaluates the clean images first
                },
                "records": {},
            }
        run = runs[key]
        threats = [Threat()] if c.metric == "clean" else [c.threat]
        for th in threats:
            settings = attack_settings(th, batch_size)
            if settings not in run["evaluation"]["threats"]:
                run["evaluation"]["threats"].append(settings)
        f = found.get(c)
        run["records"][c.threat.label if c.metric == "robust" else "Clean"] = (
            "missing" if f is None else ("found" if f.complete else f"partial ({f.n} of {f.n_total} images)")
        )
    return {
        "target": t.id,
        "caption": t.caption,
        "profile": {"name": prof.name, "family": profile_family(prof), **prof.knobs()},
        "train_profile": train_prof.to_dict(),
        "base_model": {"arch": arch, "pretrained": pretrained},
        "batch_size": batch_size,
        "results": str(out_dir),
        "models": str(models_dir),
        "cells": {"total": len(cells), "with_record": sum(f is not None and f.complete for f in found.values())},
        "runs": list(runs.values()),
    }
