"""Methods. Importing this package registers every method."""

# ruff: noqa: I001  (the import order is the registration order)

# registration, in leaderboard order: zero-shot, the paper's baselines and method, then peers
from . import zeroshot, ft_standard, tecoa, pmg_aft, interpolation  # noqa: F401, I001
from . import visual_prompts, fare, twins, tga_zsr  # noqa: F401, I001
from . import ttc, clipure  # noqa: F401, I001  (test-time defenses)
from .base import METHODS, Method, MethodConfig, Recipe, Step, register_method

__all__ = ["METHODS", "Method", "MethodConfig", "Recipe", "Step", "register_method"]
