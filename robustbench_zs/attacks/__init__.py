"""Attacks on the zero-shot classifier. Importing this package registers every attack."""

from . import pgd  # noqa: F401  (registration)
from .base import ATTACKS, NORMS, AttackEntry, Threat, fmt255
from .pgd import pgd_single, run_pgd

__all__ = ["ATTACKS", "NORMS", "AttackEntry", "Threat", "fmt255", "pgd_single", "run_pgd"]
