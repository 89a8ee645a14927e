"""The README's performance table, from the committed ``zsbench bench`` reports.

    python benchmarks/summarize.py [benchmarks/results/bench-*.json ...]

Prints one Markdown row per report (``robustbench_zs.bench.markdown_summary``); the README's table between the
``bench-table`` markers is this output, and a test keeps the two equal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from robustbench_zs.bench import markdown_summary

RESULTS = Path(__file__).resolve().parent / "results"


def reports(paths: list[str] | None = None) -> list[dict]:
    files = [Path(p) for p in paths] if paths else sorted(RESULTS.glob("bench-*.json"))
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


if __name__ == "__main__":
    print(markdown_summary(reports(sys.argv[1:])))
