"""``zsbench compare A B``: are two methods' accuracies different, image by image, beyond chance?

Every record of A is paired with the record of B measured on the same images (dataset, subset hash, content hash)
under the same threat and protocol (attack settings, profile knobs, attack seed). Each pair is tested with McNemar's
test on the per-image correctness the records store, and the significance calls are Holm-Bonferroni corrected over
all the pairs shown, so comparing many datasets and threats at once does not inflate the chance of a false call.
Records without a partner are listed, never compared: a number measured on other images or under another protocol
says nothing about this pair.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..datasets import DATASETS
from ..errors import ZSBenchError
from ..results import RecordStore, holm_adjust, mcnemar

#: Columns that must agree for two records to be compared: the same images under the same threat and protocol.
PAIR_KEY = ("dataset", "indices_sha256", "content_sha256", "table", "protocol")

#: What distinguishes one evaluated model from another inside a selection.
_IDENTITY = ("method", "model", "weights")


@dataclass
class Comparison:
    """The outcome of :func:`compare`.

    Attributes:
        a / b: what was asked for (method label, method id or ``label · model``).
        a_rows / b_rows: the ``label · model`` rows each side selected.
        alpha: the family-wise significance level.
        pairs: one row per compared pair (see :func:`compare` for the columns).
        unpaired: records of one side without a partner on the other: side, row, dataset, table (threat),
            protocol, n, images (count and subset hash prefix), accuracy, reason, record.
    """

    a: str
    b: str
    a_rows: list[str]
    b_rows: list[str]
    alpha: float
    pairs: pd.DataFrame
    unpaired: pd.DataFrame


def _row_name(df: pd.DataFrame) -> pd.Series:
    return df["method"] + " · " + df["model"]


def select(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of ``records_frame`` whose method label or ``label · model`` equals ``name``, else whose method id does
    (so that a test-time defense's id names its adaptive evaluation, whose label it is).

    Raises:
        ZSBenchError: nothing matches; the message lists the method labels present.
    """
    if df.empty:
        raise ZSBenchError("no records to compare; run `zsbench run` first")
    # a label names its rows first: ``ttc`` is the adaptive evaluation, ``ttc (non-adaptive)`` the other one
    hit = (df["method"] == name) | (_row_name(df) == name)
    if not hit.any():
        hit = df["method_id"] == name
    if not hit.any():
        labels = ", ".join(sorted(df["method"].unique()))
        raise ZSBenchError(f"no records of {name!r}; method labels present: {labels}")
    return df[hit]


def _one_per_key(side: pd.DataFrame, which: str, name: str) -> pd.DataFrame:
    """One record per pairing key; several evaluated models under one key make the selection ambiguous."""
    # the same model measured twice under the same key (e.g. --force): the newest record stands, as on the leaderboard
    side = side.sort_values("created_utc").drop_duplicates([*PAIR_KEY, *_IDENTITY], keep="last")
    clash = side.groupby(list(PAIR_KEY))["record"].transform("size") > 1
    if clash.any():
        g = side[clash]
        names = _row_name(g)
        # the same name for different weights (a checkpoint replaced under the same name): tell them apart
        names = names.where(names.map(names.value_counts()) == 1, names + " @" + g["weights"].str[:8])
        rows = sorted(set(names))
        raise ZSBenchError(
            f"{which} {name!r} selects {len(rows)} evaluated models on the same images ({g['dataset'].iloc[0]}, "
            f"{g['table'].iloc[0]}): {'; '.join(rows)}; name one of them exactly"
        )
    return side


def _load_mask(path: str) -> np.ndarray:
    return RecordStore.read_path(Path(path)).per_example()


def _order_key(dataset_order: list[str]) -> Callable[[pd.DataFrame], pd.Series]:
    def key(col: pd.Series) -> pd.Series:
        if col.name == "dataset":
            return col.map(lambda d: dataset_order.index(d) if d in dataset_order else len(dataset_order))
        return col

    return key


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Clean first, then by eps, threat, protocol and the registry's dataset order."""
    if frame.empty:
        return frame
    frame = frame.assign(_clean=frame["table"] != "Clean")
    cols = ["_clean", "eps_255", "table", "protocol", "dataset"]
    return frame.sort_values(cols, key=_order_key(DATASETS.names()), kind="stable").drop(columns="_clean")


def compare(
    df: pd.DataFrame,
    a: str,
    b: str,
    alpha: float = 0.05,
    mask_of: Callable[[str], np.ndarray] | None = None,
) -> Comparison:
    """Pair A's records with B's on the same images, threat and protocol; McNemar-test each pair; Holm-correct.

    Args:
        df: ``report.leaderboard.records_frame(out_dir)`` (or a frame with its columns).
        a, b: the two sides: a method label (``interpolation(alpha=0.5)``), a method id (``tecoa``) or a leaderboard
            row name (``clip · ViT-B-32/openai``).
        alpha: family-wise significance level for the Holm-Bonferroni correction over all pairs.
        mask_of: per-image correctness of a record from its ``record`` column (default: read the record file).

    Returns:
        A :class:`Comparison` whose ``pairs`` frame has, per pair: dataset, dataset_name, table (threat), protocol,
        eps_255, n, a_row / b_row, acc_a / acc_b (%), diff (A - B, points), b (A right, B wrong), c (A wrong, B
        right), test, p_value (of the reported test), p_exact, chi2, p_chi2, p_holm, significant, record_a, record_b.

    Raises:
        ZSBenchError: A or B matches nothing, both select the same records, a side is ambiguous, or alpha is not
            in (0, 1).
    """
    if not 0 < alpha < 1:
        raise ZSBenchError(f"--alpha {alpha} must be in (0, 1)")
    mask_of = mask_of or _load_mask
    sa, sb = select(df, a), select(df, b)
    if set(sa["record"]) & set(sb["record"]):
        raise ZSBenchError(f"{a!r} and {b!r} select the same records; name two different methods")
    sa, sb = _one_per_key(sa, "A", a), _one_per_key(sb, "B", b)
    keep = ["dataset_name", "eps_255", "n", "accuracy", "record", "method", "model"]
    merged = sa[[*PAIR_KEY, *keep]].merge(
        sb[[*PAIR_KEY, *keep]], on=list(PAIR_KEY), how="outer", suffixes=("_a", "_b"), indicator=True
    )
    rows = []
    for _, m in merged[merged["_merge"] == "both"].iterrows():
        mask_a, mask_b = mask_of(m["record_a"]), mask_of(m["record_b"])
        if mask_a.size != m["n_a"] or mask_b.size != m["n_b"] or mask_a.size != mask_b.size:
            raise ZSBenchError(
                f"{m['record_a']} and {m['record_b']} claim the same images but hold {mask_a.size} and "
                f"{mask_b.size} per-example results"
            )
        t = mcnemar(mask_a, mask_b)
        acc_a, acc_b = 100.0 * mask_a.mean(), 100.0 * mask_b.mean()
        rows.append(
            {
                "dataset": m["dataset"],
                "dataset_name": m["dataset_name_a"],
                "table": m["table"],
                "protocol": m["protocol"],
                "eps_255": m["eps_255_a"],
                "n": t.n,
                "a_row": f"{m['method_a']} · {m['model_a']}",
                "b_row": f"{m['method_b']} · {m['model_b']}",
                "acc_a": acc_a,
                "acc_b": acc_b,
                "diff": acc_a - acc_b,
                "b": t.b,
                "c": t.c,
                "test": t.test,
                "p_value": t.p_value,
                "p_exact": t.p_exact,
                "chi2": t.chi2,
                "p_chi2": t.p_chi2,
                "record_a": m["record_a"],
                "record_b": m["record_b"],
            }
        )
    pairs = _sorted(pd.DataFrame(rows)).reset_index(drop=True)
    if not pairs.empty:
        pairs["p_holm"] = holm_adjust(pairs["p_value"].to_numpy())
        pairs["significant"] = pairs["p_holm"] <= alpha
    lonely = []
    for side, tag, other in (("A", "left_only", sb), ("B", "right_only", sa)):
        sfx = "_a" if side == "A" else "_b"
        for _, m in merged[merged["_merge"] == tag].iterrows():
            lonely.append(
                {
                    "side": side,
                    "row": f"{m['method' + sfx]} · {m['model' + sfx]}",
                    "dataset": m["dataset"],
                    "dataset_name": m["dataset_name" + sfx],
                    "table": m["table"],
                    "protocol": m["protocol"],
                    "eps_255": m["eps_255" + sfx],
                    "n": int(m["n" + sfx]),
                    "images": f"{int(m['n' + sfx])} [{str(m['indices_sha256'])[:6]}]",
                    "accuracy": m["accuracy" + sfx],
                    "reason": _why_unpaired(m, other, "B" if side == "A" else "A"),
                    "record": m["record" + sfx],
                }
            )
    unpaired = _sorted(pd.DataFrame(lonely)).reset_index(drop=True)
    return Comparison(
        a=a,
        b=b,
        a_rows=sorted(set(_row_name(sa))),
        b_rows=sorted(set(_row_name(sb))),
        alpha=alpha,
        pairs=pairs,
        unpaired=unpaired,
    )


def _why_unpaired(m: pd.Series, other: pd.DataFrame, name: str) -> str:
    """Why a record has no partner: what the other side has on its dataset."""
    same_ds = other[other["dataset"] == m["dataset"]]
    if same_ds.empty:
        return f"{name} has no record on this dataset"
    same_images = (same_ds["indices_sha256"] == m["indices_sha256"]) & (
        same_ds["content_sha256"] == m["content_sha256"]
    )
    same_threat = same_ds["table"] == m["table"]
    if (same_threat & (same_ds["protocol"] == m["protocol"])).any():
        return f"{name} was measured on other images"
    if (same_threat & same_images).any():
        return f"{name} was measured under another protocol"
    return f"{name} has no record under this threat"


def _flat_protocol(protocol: str) -> dict[str, object]:
    p = json.loads(protocol)
    flat = {f"attack.{k}": v for k, v in p["attack"].items() if k not in ("eps", "eps_255")}
    flat.update({k: v for k, v in p["profile"].items()})
    flat["attack seed"] = p["attack_seed"]
    return flat


def _protocol_tags(protocols: list[str]) -> dict[str, str]:
    """Short names P1, P2, ... and what sets each apart, for protocols that share a threat label."""
    flats = {p: _flat_protocol(p) for p in protocols}
    keys = sorted({k for f in flats.values() for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats.values()}) > 1]
    return {p: ", ".join(f"{k}={flats[p].get(k)}" for k in varying) for p in protocols}


def _pairs_text(k: int) -> str:
    return "the 1 pair" if k == 1 else f"all {k} pairs"


def _fmt_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def render(comp: Comparison) -> str:
    """The comparison as text: the pair table (github format), its footer, and the unpaired records."""
    lines = [f"A = {'; '.join(comp.a_rows)}", f"B = {'; '.join(comp.b_rows)}", ""]
    protocols = list(dict.fromkeys([*comp.pairs.get("protocol", []), *comp.unpaired.get("protocol", [])]))
    # a protocol column only where one threat label was measured under more than one protocol
    both = pd.concat(
        [comp.pairs.reindex(columns=["table", "protocol"]), comp.unpaired.reindex(columns=["table", "protocol"])]
    )
    several = bool(len(both)) and bool((both.groupby("table")["protocol"].nunique() > 1).any())
    tag = {p: f"P{i + 1}" for i, p in enumerate(protocols)}
    if comp.pairs.empty:
        lines.append("No pairs: no record of A shares images, threat and protocol with a record of B.")
    else:
        headers = ["dataset", "threat", *(["protocol"] if several else []), "n", "acc A %", "acc B %"]
        headers += ["A−B (pts)", "b", "c", "p", "test", "p Holm", f"significant (α={comp.alpha:g})"]
        body = []
        for _, r in comp.pairs.iterrows():
            body.append(
                [
                    r["dataset_name"],
                    r["table"],
                    *([tag[r["protocol"]]] if several else []),
                    r["n"],
                    f"{r['acc_a']:.2f}",
                    f"{r['acc_b']:.2f}",
                    f"{r['diff']:+.2f}",
                    r["b"],
                    r["c"],
                    _fmt_p(r["p_value"]),
                    "exact" if r["test"] == "exact" else "χ²",
                    _fmt_p(r["p_holm"]),
                    "yes" if r["significant"] else "no",
                ]
            )
        lines.append(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))
        lines += [
            "",
            "b: images A classifies correctly and B does not; c: the reverse. p: McNemar's test on the paired "
            "per-image results, exact binomial when b + c < 25, else chi-square with continuity correction.",
            f"Significance is Holm-Bonferroni corrected over {_pairs_text(len(comp.pairs))} in this table: 'yes' where "
            f"the adjusted p ≤ α = {comp.alpha:g} (family-wise error rate ≤ α).",
        ]
    if len(comp.unpaired):
        lines += [
            "",
            "Unpaired records (no partner on the same images under the same threat and protocol; listed, not compared):",
            "",
        ]
        body = [
            [
                r["side"],
                r["row"],
                r["dataset_name"],
                r["table"],
                *([tag[r["protocol"]]] if several else []),
                r["images"],
                f"{r['accuracy']:.2f}",
                r["reason"],
            ]
            for _, r in comp.unpaired.iterrows()
        ]
        headers = ["side", "method · model", "dataset", "threat", *(["protocol"] if several else [])]
        headers += ["images [subset]", "acc %", "not compared because"]
        lines.append(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))
    if several:
        described = _protocol_tags(protocols)
        lines += ["", "Protocols (what sets them apart):"]
        lines += [f"  {tag[p]}: {described[p] or 'same settings'}" for p in protocols]
    return "\n".join(lines)


def comparison_frame(comp: Comparison) -> pd.DataFrame:
    """Pairs and unpaired records as one long frame (``status``: paired, only A, only B), for ``--csv``."""
    pairs = comp.pairs.assign(status="paired")
    lonely = comp.unpaired.assign(status="only " + comp.unpaired.get("side", pd.Series(dtype=str)))
    if len(lonely):
        lonely = lonely.rename(columns={"accuracy": "acc", "record": "record_only"})
        lonely["a_row"] = lonely["row"].where(lonely["side"] == "A")
        lonely["b_row"] = lonely["row"].where(lonely["side"] == "B")
        lonely["acc_a"] = lonely["acc"].where(lonely["side"] == "A")
        lonely["acc_b"] = lonely["acc"].where(lonely["side"] == "B")
        lonely["record_a"] = lonely["record_only"].where(lonely["side"] == "A")
        lonely["record_b"] = lonely["record_only"].where(lonely["side"] == "B")
    cols = ["status", "dataset", "table", "protocol", "eps_255", "n", "a_row", "b_row", "acc_a", "acc_b", "diff"]
    cols += ["b", "c", "test", "p_value", "p_exact", "chi2", "p_chi2", "p_holm", "significant", "reason"]
    cols += ["record_a", "record_b"]
    frames = [f.reindex(columns=cols) for f in (pairs, lonely) if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
