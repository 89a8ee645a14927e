"""Execution: evaluation loops and the run planner."""

from .evaluator import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
