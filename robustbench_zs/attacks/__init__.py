"""Attacks on the zero-shot classifier. Importing this package registers every attack."""

# ruff: noqa: I001  (the import order is the registration order: the order of zsbench list attacks)
from . import pgd, apgd, autoattack, cw  # noqa: F401
from .base import ATTACKS, NORMS, PRECISIONS, Attack, AttackEntry, Threat, fmt255
from .pgd import pgd_single, run_pgd

__all__ = ["ATTACKS", "NORMS", "PRECISIONS", "Attack", "AttackEntry", "Threat", "fmt255", "pgd_single", "run_pgd"]
