"""Attacks on the zero-shot classifier. Importing this package registers every attack."""

from . import apgd, autoattack, cw, pgd  # noqa: F401  (registration, in this order)
from .base import ATTACKS, NORMS, PRECISIONS, AttackEntry, Threat, fmt255
from .pgd import pgd_single, run_pgd

__all__ = ["ATTACKS", "NORMS", "PRECISIONS", "AttackEntry", "Threat", "fmt255", "pgd_single", "run_pgd"]
