"""Do bf16 attacks reach the fp32 verdicts? Pairs the records of one results folder that differ only in the attack's
precision and compares them image by image.

    zsbench run --preset world --out R                           # fp32 attacks (the default)
    zsbench run --preset world --attack-precision bf16 --out R   # the same threats in bf16
    python benchmarks/precision_verdicts.py R [--json FILE]

For every pair (same method, weights, dataset, images, attack settings, profile knobs and seed; fp32 against bf16)
it prints both robust accuracies with their 95% Wilson intervals, the share of images given the same verdict, and
whether the bf16 accuracy lies inside the fp32 interval (the GPU check of issue 19: bf16 verdicts equal to fp32
within the Wilson interval). Exit status 1 if a pair falls outside, 2 if the folder holds no pair.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from robustbench_zs.results import RecordStore
from robustbench_zs.results.record import Record
from robustbench_zs.results.stats import wilson_interval


def pairing_key(r: Record) -> str:
    """Everything that identifies a record's number except the attack's precision."""
    return json.dumps(
        {
            "method": r.method,
            "label": r.method_label,
            "weights": [r.model.get(k) for k in ("arch", "weights_sha256", "checkpoint")],
            "dataset": {k: r.dataset.get(k) for k in ("id", "content_sha256", "indices_sha256", "n")},
            "attack": {k: v for k, v in r.attack.items() if k not in ("precision", "precision_detail")},
            "profile": {
                k: v
                for k, v in r.profile.items()
                if k not in ("name", "attack_precision", "text_head_key", "logit_scale_value")
            },
            "seed": r.seed,
        },
        sort_keys=True,
    )


def compare(out_dir: Path) -> list[dict]:
    by_key: dict[str, dict[str, Record]] = {}
    for r in RecordStore(out_dir).iter_records():
        if r.is_clean:
            continue
        by_key.setdefault(pairing_key(r), {})[r.attack.get("precision", "fp32")] = r
    rows = []
    for pair in by_key.values():
        if "fp32" not in pair or "bf16" not in pair:
            continue
        a, b = pair["fp32"], pair["bf16"]
        va, vb = a.per_example(), b.per_example()
        lo, hi = wilson_interval(int(va.sum()), a.n)
        rows.append(
            {
                "method": a.label,
                "dataset": a.dataset["id"],
                "threat": a.threat,
                "n": a.n,
                "fp32": a.accuracy,
                "fp32_ci95": [lo, hi],
                "bf16": b.accuracy,
                "bf16_ci95": list(b.ci95),
                "agreement": float(np.mean(va == vb)),
                "fp32_only_robust": int((va & ~vb).sum()),
                "bf16_only_robust": int((vb & ~va).sum()),
                "bf16_inside_fp32_ci": bool(lo <= b.accuracy <= hi),
                "device": a.run.get("device"),
                "bf16_device": b.run.get("device"),
            }
        )
    return sorted(rows, key=lambda r: (r["method"], r["dataset"], r["threat"]))


def table(rows: list[dict]) -> str:
    lines = [
        "| method | dataset | threat | n | fp32 % [95% CI] | bf16 % | same verdict | inside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["fp32_ci95"]
        lines.append(
            f"| {r['method']} | {r['dataset']} | {r['threat']} | {r['n']} | {100 * r['fp32']:.2f} "
            f"[{100 * lo:.1f}, {100 * hi:.1f}] | {100 * r['bf16']:.2f} | {100 * r['agreement']:.1f}% | "
            f"{'yes' if r['bf16_inside_fp32_ci'] else 'NO'} |"
        )
    inside = sum(r["bf16_inside_fp32_ci"] for r in rows)
    images = sum(r["n"] for r in rows)
    same = sum(round(r["agreement"] * r["n"]) for r in rows)
    lines.append("")
    lines.append(
        f"{inside} of {len(rows)} pairs inside the fp32 interval; {same} of {images} verdicts equal "
        f"({100 * same / images:.2f}%)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="results folder holding fp32 and bf16 records of the same threats")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    rows = compare(args.results)
    if not rows:
        print(f"precision_verdicts: no fp32/bf16 pair of records in {args.results}", file=sys.stderr)
        return 2
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"source": str(args.results), "pairs": rows}, indent=1) + "\n")
    return 0 if all(r["bf16_inside_fp32_ci"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
