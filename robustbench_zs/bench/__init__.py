"""``zsbench bench``: how fast training and evaluation run, how close to the machine's matmul peak, and how much
faster than the official code's way of computing the same (see :mod:`robustbench_zs.bench.runner`)."""

from .runner import Bench, BenchConfig, markdown_summary, run_bench, table

__all__ = ["Bench", "BenchConfig", "markdown_summary", "run_bench", "table"]
