"""Markdown and CSV leaderboards from the records: methods as rows, datasets as columns plus the average.

One table per threat and protocol: records whose attack settings, profile knobs, subset size or seed differ never
share a table, so no cell is ranked against a number measured differently. A row whose checkpoint was trained with
other knobs than the table evaluates with (say CLIP normalization, evaluated with ImageNet's) is marked
:data:`TRAIN_EVAL_MARK` and listed under the table with every knob that differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..atomic import write_text
from ..attacks.sanity import (
    adaptive_above_non_adaptive,
    autoattack_above_pgd,
    leaderboard_flags,
    robust_rises_with_effort,
    robust_rises_with_eps,
)
from ..datasets import DATASETS
from ..datasets.tiers import TIER_LINES, tier_of
from ..methods import METHODS
from ..profiles import knob_differences, train_eval_differences
from ..results import RecordStore
from ..results.cost import UNITS, format_device_hours, read_cost, sum_costs
from ..results.record import Record
from ..results.stats import bootstrap_mean_ci

#: Marks a row trained under other knobs than it is evaluated with (``profiles.train_eval_differences``).
TRAIN_EVAL_MARK = "⚑"
#: marks a test-time defense's row attacked non-adaptively (the attack saw the undefended model)
NON_ADAPTIVE_MARK = "‡"
NON_ADAPTIVE = "non-adaptive"


def _dataset_order() -> list[str]:
    return DATASETS.names()


def _method_order() -> list[str]:
    return METHODS.names()


def records_frame(
    out_dir: Path | None, mix_profiles: bool = False, cost: bool = False, records: Iterable[Record] | None = None
) -> pd.DataFrame:
    """One row per valid record, with the fields that place it in a table.

    Args:
        out_dir: the results folder whose records to read (ignored when ``records`` are given).
        records: the records to tabulate instead of a folder's (``zsbench site``: a submission's and local ones).
        mix_profiles: leave the profile knobs out of the table key, so rows measured under different knobs share a
            table (each row then names its profile); off by default: such numbers are not comparable.
        cost: add each record's cost (:func:`_cost_columns`: device hours, wall seconds, hardware, or why not).
    """
    rows = []
    for r in RecordStore(out_dir).iter_records() if records is None else records:
        attack, profile, d, model = r.attack, r.profile, r.dataset, r.model
        # a table holds one threat under one set of knobs; robust tables also one attack seed (random starts)
        # and one tier (fast, gold, or none: datasets.tiers.tier_of, from what was measured): tiers never share a table
        protocol = replace(r.protocol, tier=tier_of(d, attack))
        lo, hi = r.ci95
        sanity = r.sanity or {}
        training = model.get("training") or {}
        evaluation = r.evaluation or {}
        rows.append(
            {
                "table": r.threat,
                "protocol": protocol.key(mix_profiles),
                "method": r.label,
                "method_id": r.method,
                "model": model["label"],
                "weights": _weights_id(model),
                "dataset": d["id"],
                "dataset_name": d["name"],
                "split": d["split"],
                "n": r.n,
                "n_total": d["n_total"],
                "indices_sha256": d["indices_sha256"],
                "tier": protocol.tier or "",
                "content_sha256": d.get("content_sha256", ""),
                "accuracy": 100.0 * r.accuracy,
                "ci95_low": 100.0 * lo,
                "ci95_high": 100.0 * hi,
                "eps_255": attack.get("eps_255", 0.0),
                "attack": attack.get("name"),
                "norm": attack.get("norm"),
                "steps": attack.get("steps"),
                "precision": attack.get("precision", "fp32"),
                "seed": r.seed,
                "knobs": json.dumps(protocol.knobs, sort_keys=True),
                "profile_name": profile.get("name", "custom"),
                # a test-time defense's robust records: adaptive or not (empty for every other record)
                "evaluation": ("adaptive" if evaluation["adaptive"] else NON_ADAPTIVE) if evaluation else "",
                "eot_samples": evaluation.get("eot_samples", 1) if evaluation else 1,
                "flags": sanity.get("flags", ""),
                "failed_checks": json.dumps([c for c in sanity.get("checks", []) if not c.get("passed", True)]),
                "train_eval": "; ".join(
                    train_eval_differences(training.get("knobs"), profile, training.get("knobs_unused") or ())
                ),
                "created_utc": r.created_utc,
                "record": str(r.path),
                **(_cost_columns(r) if cost else {}),
                "variant": variant_id(r),
            }
        )
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # one variant is one row whatever its weights' files were called when each record was computed (record keys hold
    # their hashes, not their names or paths, so a renamed copy reuses its records): the newest record's names label
    # all of its records
    ordered = df.sort_values("created_utc")
    for column in ("method", "model"):
        df.loc[ordered.index, column] = ordered.groupby("variant")[column].transform("last")
    return df.drop(columns="variant")


#: What a record's model block holds that names its weights without changing them (not part of its key).
_NAMES = ("label", "checkpoint_name", "training", "source")


def variant_id(r: Record, evaluation: bool = True) -> str:
    """What makes a record's row: the method, a defense's evaluation (unless ``evaluation`` is False), and its model
    block without names and paths (a checkpoint's folder name, the backbone's file path or tag beside the hash of its
    tensors, the paths of a method's ``weights_options``, whose hashes are beside them)."""
    model = {k: v for k, v in r.model.items() if k not in _NAMES}
    if model.get("weights_sha256"):  # the backbone's tensors, hashed: its tag or file path only names them
        model.pop("pretrained", None)
    if r.method in METHODS:  # a method no longer registered keeps its paths: its rows are told apart by them
        model = METHODS.get(r.method).without_weight_paths(model)
    return json.dumps([r.method, r.evaluation if evaluation else None, model], sort_keys=True)


def _cost_columns(record) -> dict:
    """A record's cost as plain columns: ``gpu_hours``, ``cpu_core_hours`` (NaN where it used none), ``wall_s``,
    ``hardware`` and ``cost_missing`` (why a record has no readable cost, else empty)."""
    c, why = read_cost(record)
    hours = (c or {}).get("hours", {})
    return {
        **{k: hours.get(unit, np.nan) for k, unit in UNITS.items()},
        "wall_s": c["wall_s"] if c else np.nan,
        "hardware": c["hardware"][0] if c else "",
        "cost_missing": why or "",
    }


def _row_costs(g: pd.DataFrame, rows: list[str]) -> dict:
    """The cost column of one table: per row the device hours of its records here, with their unit, ``mixed
    hardware`` where they ran on different hardware, and how many records had a cost; notes for the others."""
    cells, hours, notes = {}, {}, []
    for r in rows:
        recs = g[g["row"] == r]
        costs = [
            {
                "hours": {unit: rec[k] for k, unit in UNITS.items() if pd.notna(rec[k])},
                "wall_s": rec["wall_s"],
                "images": int(rec["n"]),
                "hardware": [rec["hardware"]],
                "hardware_key": rec["hardware"],
            }
            for _, rec in recs.iterrows()
            if not rec["cost_missing"]
        ]
        total = sum_costs(costs)
        if total is None:
            cells[r] = "—"
            continue
        text = format_device_hours(total)
        if len(total["hardware"]) > 1:
            text += ", mixed hardware"
            notes.append(f"{r} ran on mixed hardware: {'; '.join(total['hardware'])}.")
        if len(costs) < len(recs):
            text += f" ({len(costs)} of {len(recs)} records)"
        cells[r] = text
        hours[r] = total["hours"]
    missing = g[g["cost_missing"] != ""]
    for why, n in missing["cost_missing"].value_counts(sort=False).items():
        notes.append(f"{n} record{'s' if n > 1 else ''} left out of the cost ({why}).")
    hardware = sorted(set(g.loc[g["cost_missing"] == "", "hardware"]))
    return {"cost": cells, "cost_hours": hours, "cost_hardware": hardware, "cost_notes": notes}


def _weights_id(model: dict) -> str:
    """The sha256 of the weights a row evaluates: the fine-tuned checkpoint's when there is one (``checkpoint``),
    else the backbone's (``checkpoint_sha256`` of a loaded file, ``weights_sha256`` of the tensors)."""
    tuned = model.get("checkpoint")
    if isinstance(tuned, str) and tuned:
        return tuned.removeprefix("sha256:")
    return model.get("checkpoint_sha256") or model.get("weights_sha256") or ""


def cross_record_checks(df: pd.DataFrame) -> pd.DataFrame:
    """Checks that need several records of one row and dataset: AutoAttack vs PGD, robust accuracy vs eps.

    Records are grouped by leaderboard row (method, model, weights), dataset images, profile knobs and attack seed;
    within a group, ``autoattack_above_pgd`` compares every AutoAttack record with every PGD record of the same norm
    and eps, and ``robust_rises_with_eps`` runs per attack, norm, steps and precision over its radii. Returns one row
    per check: its group, the threat labels it concerns, and the check dict.
    """
    cols = ["row", "dataset", "indices_sha256", "content_sha256", "knobs", "seed"]
    out = []
    if df.empty:
        return pd.DataFrame(out)
    robust = df[df["attack"] != "clean"].copy()
    if "row" not in robust:
        robust["row"] = _row_labels(robust)
    if robust.empty:
        return pd.DataFrame(out)
    masks: dict[str, object] = {}

    def mask(path: str):
        if path not in masks:
            masks[path] = RecordStore.read_path(Path(path)).per_example()
        return masks[path]

    for key, g in robust.groupby(cols, sort=False, dropna=False):
        g = g.sort_values("created_utc").drop_duplicates(["table"], keep="last")
        base = dict(zip(cols, key, strict=True))
        aa, pgd = g[g["attack"] == "autoattack"], g[g["attack"] == "pgd"]
        for _, a in aa.iterrows():
            for _, b in pgd[(pgd["norm"] == a["norm"]) & (pgd["eps_255"] == a["eps_255"])].iterrows():
                check = autoattack_above_pgd(
                    mask(a["record"]), mask(b["record"]), label=f"{a['table']} vs {b['table']}"
                )
                out.append({**base, "tables": [a["table"], b["table"]], "check": check})
        for _, fam in g.groupby(["attack", "norm", "steps", "precision"], sort=False, dropna=False):
            if fam["eps_255"].nunique() < 2 or len(fam) != fam["eps_255"].nunique():
                continue
            fam = fam.sort_values("eps_255")
            check = robust_rises_with_eps(
                {row["eps_255"] / 255: mask(row["record"]) for _, row in fam.iterrows()},
                label=f"{fam['attack'].iloc[0]} {fam['norm'].iloc[0]}",
            )
            out.append({**base, "tables": list(fam["table"]), "check": check})
        for _, fam in g.groupby(["attack", "norm", "eps_255", "precision"], sort=False, dropna=False):
            fam = fam.dropna(subset=["steps"])
            if fam["steps"].nunique() < 2 or len(fam) != fam["steps"].nunique():
                continue
            check = robust_rises_with_effort(
                "steps",
                {int(row["steps"]): mask(row["record"]) for _, row in fam.iterrows()},
                label=f"{fam['attack'].iloc[0]} {fam['norm'].iloc[0]} eps {fam['eps_255'].iloc[0]:g}/255",
            )
            out.append({**base, "tables": list(fam["table"]), "check": check})
    out += _defense_checks(robust, mask)
    return pd.DataFrame(out)


def _defense_checks(robust: pd.DataFrame, mask) -> list[dict]:
    """A test-time defense's checks across its evaluations of one threat on one set of images: the adaptive attack
    must break at least what the non-adaptive one breaks (``adaptive_above_non_adaptive``, on the adaptive row), and
    more EOT samples must not raise robust accuracy (``robust_rises_with_effort``, on the row with more samples)."""
    if "evaluation" not in robust or not (robust["evaluation"] != "").any():
        return []
    out = []
    cols = ["method_id", "model", "weights", "dataset", "indices_sha256", "content_sha256", "knobs", "seed", "table"]
    defended = robust[robust["evaluation"] != ""]
    for key, g in defended.groupby(cols, sort=False, dropna=False):
        g = g.sort_values("created_utc").drop_duplicates(["row"], keep="last")
        base = {c: key[cols.index(c)] for c in ("dataset", "indices_sha256", "content_sha256", "knobs", "seed")}
        adaptive, plain = g[g["evaluation"] == "adaptive"], g[g["evaluation"] == NON_ADAPTIVE]
        for _, a in adaptive.iterrows():
            for _, b in plain.iterrows():
                check = adaptive_above_non_adaptive(mask(a["record"]), mask(b["record"]), label=a["table"])
                out.append({**base, "row": a["row"], "tables": [a["table"]], "check": check})
        if adaptive["eot_samples"].nunique() > 1 and len(adaptive) == adaptive["eot_samples"].nunique():
            check = robust_rises_with_effort(
                "eot_samples",
                {int(r["eot_samples"]): mask(r["record"]) for _, r in adaptive.iterrows()},
                label=adaptive["table"].iloc[0],
            )
            rows = adaptive.sort_values("eot_samples")["row"]
            out += [{**base, "row": r, "tables": [adaptive["table"].iloc[0]], "check": check} for r in rows]
    return out


def _row_labels(df: pd.DataFrame) -> pd.Series:
    label = df["method"] + " · " + df["model"]
    # the same label for different weights (a checkpoint replaced under the same name) must not merge
    clash = df.groupby(label)["weights"].transform("nunique") > 1
    return label.where(~clash, label + " @" + df["weights"].str[:8])


def _images(n: int, n_total: int) -> str:
    return str(n) if n == n_total else f"{n} of {n_total}"


def _attack_line(a: dict, seed) -> str:
    head = f"{a['name']} {a['norm']} eps {a['eps_255']:g}/255"
    if a.get("name") == "autoattack":
        how = f"standard ({', '.join(a.get('components', []))}; {a.get('implementation')}"
        how += f" {a['commit'][:12]})" if a.get("commit") else ")"
    elif a.get("version") == "custom":  # apgd-ce+t: AutoAttack's APGD components (restarts x iterations each)
        s = a.get("settings", {})
        runs = [f"{c} {s.get(c, {}).get('n_restarts')}x{s.get(c, {}).get('n_iter')}" for c in a.get("components", [])]
        how = f"AutoAttack version custom ({', '.join(runs)} iterations; {a.get('implementation')})"
    elif not a.get("step_size_255"):
        how = f"{a['steps']} iterations, adaptive step"
    else:
        how = f"{a['steps']} steps of {a['step_size_255']:g}/255"
        how += ", random start" if a.get("random_start") else ", no random start"
    return f"{head}, {how}, {a.get('precision', 'fp32')}, attack seed {seed}"


def _protocol_line(protocol: str, names: list[str] | None = None) -> str:
    """The table's protocol in words; ``names``: the profile names its records were written under."""
    p = json.loads(protocol)
    a, prof = p["attack"], p["profile"]
    if prof == "mixed":
        parts = ["profiles mixed on request (--mix-profiles): each row names its profile; rows are not comparable"]
    else:
        names = sorted(set(names or ["custom"]))
        named = f"profile {names[0]}" if len(names) == 1 else f"profiles {', '.join(names)} (the same knobs)"
        parts = [
            named,
            f"normalization {prof['normalization']}",
            f"logit scale {prof['logit_scale']}",
            f"prompts {prof['prompts']}",
            prof.get("preprocess", "native resolution"),
            f"{prof['resize']} resize to the model's input inside the model",
        ]
        if prof.get("paper_subsample"):
            parts.append("the paper's subsample (every 20th batch of 256 test images)")
    if a.get("name") != "clean":
        parts.append(_attack_line(a, p["attack_seed"]))
    if p.get("tier"):
        parts.insert(0, TIER_LINES[p["tier"]])
    return "; ".join(parts)


#: Attack settings that set the precision; tables that differ only in them are one threat measured otherwise.
_PRECISION_KEYS = ("precision", "precision_detail")


def _note_knobs(protocol: dict) -> dict:
    """Every knob of a table's protocol that its knob notes compare: the profile's, the attack's precision (robust
    tables) and the attack seed."""
    attack = protocol["attack"]
    knobs = dict(protocol["profile"])
    if attack.get("name") != "clean":
        knobs["attack_precision"] = attack.get("precision", "fp32")
        knobs["attack_seed"] = protocol["attack_seed"]
    return knobs


def _knob_notes(tables: list[dict]) -> None:
    """Tell, under each table, which knobs separate it from the tables of the same threat measured otherwise.

    Tables of one threat are those whose attack settings agree but for the precision (so ``PGD-10 L∞ ε=1/255`` and
    ``PGD-10 L∞ ε=1/255 fp16`` are one threat); each note names every knob that differs, as ``knob: mine vs
    theirs``, and the other table's title.
    """
    by_threat: dict[str, list[tuple[dict, dict]]] = {}
    for t in tables:
        t["knob_notes"] = []
        p = json.loads(t["protocol"])
        if not isinstance(p["profile"], dict):  # --mix-profiles: the rows name their profiles
            continue
        threat = {k: v for k, v in p["attack"].items() if k not in _PRECISION_KEYS}
        by_threat.setdefault(json.dumps(threat, sort_keys=True), []).append((t, _note_knobs(p)))
    for same in by_threat.values():
        for t, mine in same:
            notes = set()
            for other, theirs in same:
                diff = knob_differences(mine, theirs) if other is not t else []
                if diff:
                    notes.add((other["title"], "; ".join(diff)))
            t["knob_notes"] = sorted(notes)


def build_tables(df: pd.DataFrame, checks: pd.DataFrame | None = None) -> list[dict]:
    """Each table: title, protocol line, wide frames (rows: methods; columns: datasets, Average), image counts.

    A column is one dataset evaluated on one set of images (subset hash and content hash): rows measured on other
    images of the same dataset get a column of their own, so no two numbers on different images are compared.
    """
    if df.empty:
        return []
    df = df.copy()
    df["row"] = _row_labels(df)
    if "profile_name" in df and df["protocol"].str.contains('"profile": "mixed"').any():
        df["row"] = df["row"] + " [" + df["profile_name"] + "]"
    if "train_eval" not in df:
        df["train_eval"] = ""
    df["train_eval"] = df["train_eval"].fillna("")
    df["row"] = df["row"].where(df["train_eval"] == "", df["row"] + f" {TRAIN_EVAL_MARK}")
    if "evaluation" not in df:
        df["evaluation"] = ""
    df["evaluation"] = df["evaluation"].fillna("")
    df["row"] = df["row"].where(df["evaluation"] != NON_ADAPTIVE, df["row"] + f" {NON_ADAPTIVE_MARK}")
    if checks is None:
        checks = cross_record_checks(df)
    df["column"] = df["dataset"] + "|" + df["indices_sha256"] + "|" + df["content_sha256"]
    datasets = _dataset_order()
    methods = _method_order()
    tables = []
    groups = sorted(
        df.groupby(["table", "protocol"], sort=False),
        key=lambda g: (g[0][0] != "Clean", g[1]["eps_255"].iloc[0], g[0][0], _tier_of_key(g[0][1]), g[0][1]),
    )
    for (title, protocol), g in groups:
        # newest record wins if a cell was measured twice under the same protocol (e.g. --force)
        g = g.sort_values("created_utc").drop_duplicates(["row", "column"], keep="last")
        info = g.drop_duplicates("column").set_index("column")
        cols = sorted(
            info.index,
            key=lambda c: (
                datasets.index(info.at[c, "dataset"]) if info.at[c, "dataset"] in datasets else len(datasets),
                info.at[c, "dataset"],
                -info.at[c, "n"],
                c,
            ),
        )
        variants = info["dataset"].value_counts()
        labels = []
        for c in cols:
            name = info.at[c, "dataset_name"]
            if variants[info.at[c, "dataset"]] > 1:
                name += (
                    f" [{_images(info.at[c, 'n'], info.at[c, 'n_total'])} images, {info.at[c, 'indices_sha256'][:6]}]"
                )
            labels.append(name)
        wide = g.pivot(index="row", columns="column", values="accuracy").reindex(columns=cols)
        lo = g.pivot(index="row", columns="column", values="ci95_low").reindex(columns=cols)
        hi = g.pivot(index="row", columns="column", values="ci95_high").reindex(columns=cols)
        mixed = sorted(info.loc[info["dataset"].map(variants) > 1, "dataset_name"].unique())
        complete = wide.notna().all(axis=1) & (not mixed)
        wide["Average"] = wide[cols].mean(axis=1).where(complete)
        n_img = g.pivot(index="row", columns="column", values="n").reindex(columns=cols)
        avg_ci = {r: _average_ci(wide.loc[r, cols], n_img.loc[r, cols]) for r in wide.index if complete[r]}
        method_of = g.drop_duplicates("row").set_index("row")["method_id"]
        evaluation_of = g.drop_duplicates("row").set_index("row")["evaluation"]
        # rows attacked non-adaptively are not ranked: they come last, marked, whatever their numbers
        order = sorted(
            wide.index,
            key=lambda r: (
                evaluation_of[r] == NON_ADAPTIVE,
                methods.index(method_of[r]) if method_of[r] in methods else len(methods),
                r,
            ),
        )
        non_adaptive = [r for r in order if evaluation_of[r] == NON_ADAPTIVE]
        adaptive_ids = set(method_of[[r for r in order if evaluation_of[r] == "adaptive"]])
        only_non_adaptive = sorted({method_of[r] for r in non_adaptive} - adaptive_ids)
        flags, failed = _table_flags(g, checks, title, order)
        mismatched = g[g["train_eval"] != ""].drop_duplicates("row").set_index("row")["train_eval"]
        tier = json.loads(protocol).get("tier")
        tables.append(
            {
                "title": f"{title} ({tier} tier)" if tier else title,
                "protocol": protocol,
                "flags": flags,
                "failed": failed,
                "protocol_line": _protocol_line(protocol, list(g["profile_name"]) if "profile_name" in g else None),
                "average_ci95": avg_ci,
                "accuracy": wide.loc[order],
                "ci95_low": lo.loc[order],
                "ci95_high": hi.loc[order],
                "dataset_names": labels,
                "counts": [_images(info.at[c, "n"], info.at[c, "n_total"]) for c in cols],
                "incomplete": [] if mixed else [r for r in order if not complete[r]],
                "mixed": mixed,
                "train_eval": {r: mismatched[r] for r in order if r in mismatched.index},
                "non_adaptive": non_adaptive,
                "only_non_adaptive": only_non_adaptive,
                "evaluation": {r: evaluation_of[r] for r in order},
            }
        )
        if "cost_missing" in g:  # records_frame(cost=True): zsbench leaderboard --cost
            tables[-1].update(_row_costs(g, order))
    _knob_notes(tables)
    return tables


def _tier_of_key(protocol: str) -> str:
    """A table's tier ("" for none, so that a threat's untiered table comes first)."""
    return json.loads(protocol).get("tier") or ""


def _average_ci(acc: pd.Series, n: pd.Series) -> tuple[float, float]:
    """Bootstrap 95% interval (in %) of the mean over datasets, resampling each dataset's images independently (one
    dataset: its Wilson interval)."""
    masks = []
    for a, k in zip(acc.to_numpy(), n.to_numpy(), strict=True):
        k = int(k)
        masks.append(np.arange(k) < round(a / 100 * k))  # only the count of correct images matters
    ci = bootstrap_mean_ci(masks)
    return 100 * ci.low, 100 * ci.high


def _table_flags(g: pd.DataFrame, checks: pd.DataFrame, title: str, rows: list[str]) -> tuple[dict, list[str]]:
    """Per row, the leaderboard marker of every failed sanity check behind this table's numbers, and their details.

    A record's own checks (zero gradients, robust above clean, Square beating the gradient attacks) count for its
    row; a cross-record check (AutoAttack above PGD, robust accuracy rising with eps) for every table it involves.
    """
    if "failed_checks" not in g:
        return {}, []
    per_row: dict[str, list[dict]] = {r: [] for r in rows}
    details = []
    for _, rec in g.iterrows():
        for c in json.loads(rec["failed_checks"]):
            per_row[rec["row"]].append(c)
            details.append(f"{rec['row']} / {rec['dataset_name']}: {c['detail']}")
    if checks is not None and not checks.empty:
        for _, c in checks.iterrows():
            if title in c["tables"] and c["row"] in per_row and not c["check"]["passed"]:
                per_row[c["row"]].append(c["check"])
                name = g.loc[g["dataset"] == c["dataset"], "dataset_name"]
                where = name.iloc[0] if len(name) else c["dataset"]
                details.append(f"{c['row']} / {where}: {c['check']['detail']}")
    flags = {r: leaderboard_flags(cs) for r, cs in per_row.items()}
    return {r: f for r, f in flags.items() if f}, sorted(set(details))


def _cell(acc: float, lo: float, hi: float) -> str:
    if np.isnan(acc):
        return "—"
    return f"{acc:.2f} ({lo:.1f}–{hi:.1f})"


def render_markdown(tables: list[dict]) -> str:
    lines = [
        "# Leaderboard",
        "",
        "Top-1 zero-shot accuracy (%) with its Wilson 95% interval in brackets. A point counts as robust only if it is",
        "classified correctly on its clean image and under the attack. *Average* is the mean over the table's",
        "datasets, shown only for rows that have all of them, with a bootstrap 95% interval (images resampled",
        "within each dataset); in a table of one dataset it is that dataset's number with its Wilson interval.",
        "Generated by `zsbench leaderboard` from the records.",
        "",
    ]
    if not tables:
        lines.append("No records yet: run `zsbench run` first.")
    for t in tables:
        acc, lo, hi = t["accuracy"], t["ci95_low"], t["ci95_high"]
        cols = list(acc.columns[:-1])
        flags = t.get("flags", {})
        cost = t.get("cost")
        body = []
        for r in acc.index:
            cells = [_cell(acc.at[r, c], lo.at[r, c], hi.at[r, c]) for c in cols]
            avg = acc.at[r, "Average"]
            ci = t.get("average_ci95", {}).get(r)
            avg_cell = "—" if np.isnan(avg) else _cell(avg, *ci) if ci else f"{avg:.2f}"
            cost_cell = [cost.get(r, "—")] if cost is not None else []
            body.append([r, *cells, avg_cell, *cost_cell, *([flags.get(r, "")] if flags else [])])
        body.append(["*images*", *t["counts"], "", *([""] if cost is not None else []), *([""] if flags else [])])
        lines += [f"## {t['title']}", "", f"Protocol: {t['protocol_line']}.", ""]
        headers = ["Method", *t["dataset_names"], "Average", *(["Cost"] if cost is not None else [])]
        headers += ["Sanity"] if flags else []
        lines.append(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))
        if flags:
            lines += ["", "⚠ marks a failed sanity check (listed at the end): the number needs a second look."]
        if t.get("train_eval"):
            lines += [
                "",
                f"{TRAIN_EVAL_MARK} marks a model trained with other knobs than this table evaluates with: its numbers "
                "measure the knob change as well as the method, and do not rank with the other rows.",
            ]
            lines += [f"- {r}: {diff}" for r, diff in t["train_eval"].items()]
        if t.get("non_adaptive"):
            lines += [
                "",
                f"{NON_ADAPTIVE_MARK} marks a test-time defense attacked non-adaptively: the attack was computed on the "
                "undefended model and the defense then classified its images, as the defense's paper evaluated it. Such "
                "a number is not a robustness bound (Croce et al., ICML 2022) and is not ranked: these rows come last; "
                "the defense's adaptive row is the one to compare.",
            ]
            if t.get("only_non_adaptive"):
                lines.append(
                    f"No adaptive evaluation in this table for {', '.join(t['only_non_adaptive'])}: run it with "
                    "`zsbench run --defense-eval adaptive`."
                )
        for other, note in t.get("knob_notes", []):
            lines += ["", f"Not ranked with the {other} table measured under other knobs ({note})."]
        if t["incomplete"]:
            lines += ["", f"No average for rows missing a dataset: {', '.join(t['incomplete'])}."]
        if t["mixed"]:
            lines += ["", f"No averages: rows were evaluated on different images of {', '.join(t['mixed'])}."]
        if cost is not None:
            lines += ["", _cost_line(t), *(f"- {note}" for note in t.get("cost_notes", []))]
        lines.append("")
    failed = [(t["title"], d) for t in tables for d in t.get("failed", [])]
    if failed:
        lines += ["## Sanity checks that failed", ""]
        lines += [f"- {title}: {detail}" for title, detail in failed]
        lines.append("")
    return "\n".join(lines)


def _cost_line(t: dict) -> str:
    """What the Cost column holds, under a table of ``zsbench leaderboard --cost``."""
    hw = t.get("cost_hardware", [])
    where = f" on {'; '.join(hw)}" if hw else ""
    return (
        "Cost: the GPU-hours (GPU-h) or CPU core-hours (CPU core-h) of each row's records in this table, summed over "
        f"devices and attempts (the records' `run.cost`){where}."
    )


def wide_frame(tables: list[dict]) -> pd.DataFrame:
    frames = []
    for t in tables:
        w = t["accuracy"].copy()
        w.columns = [*t["dataset_names"], "Average"]
        ci = t.get("average_ci95", {})
        w["Average_ci95_low"] = [ci.get(r, (np.nan, np.nan))[0] for r in w.index]
        w["Average_ci95_high"] = [ci.get(r, (np.nan, np.nan))[1] for r in w.index]
        w.insert(0, "train_eval", [t.get("train_eval", {}).get(r, "") for r in w.index])
        # a test-time defense's rows say whether they were evaluated adaptively
        if any(v for t2 in tables for v in t2.get("evaluation", {}).values()):
            w.insert(0, "evaluation", [t["evaluation"].get(r, "") for r in w.index])
        w.insert(0, "sanity", [t.get("flags", {}).get(r, "") for r in w.index])
        w.insert(0, "protocol", t["protocol_line"])
        w.insert(0, "table", t["title"])
        if t.get("cost") is not None:  # zsbench leaderboard --cost
            w["cost"] = [t["cost"].get(r, "—") for r in w.index]
            for col, unit in UNITS.items():
                w[col] = [t["cost_hours"].get(r, {}).get(unit, np.nan) for r in w.index]
        frames.append(w.rename_axis("method").reset_index())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_leaderboard(out_dir: Path, mix_profiles: bool = False, cost: bool = False) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.csv`` (the wide tables) and ``records.csv`` (one row per record).

    Args:
        mix_profiles: rank rows measured under different profile knobs in one table (each row names its profile).
        cost: add a Cost column (each row's GPU-hours or CPU core-hours, from its records' ``run.cost``) to every
            table, and each record's cost to ``records.csv``; without it the files are as before costs existed.
    """
    out_dir = Path(out_dir)
    df = records_frame(out_dir, mix_profiles=mix_profiles, cost=cost)
    tables = build_tables(df)
    paths = {
        "markdown": out_dir / "leaderboard.md",
        "csv": out_dir / "leaderboard.csv",
        "records_csv": out_dir / "records.csv",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(paths["markdown"], render_markdown(tables))
    write_text(paths["csv"], wide_frame(tables).to_csv(index=False))
    write_text(paths["records_csv"], df.to_csv(index=False))
    return paths
