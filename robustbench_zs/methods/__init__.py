"""Methods. Importing this package registers every method."""

from . import zeroshot  # noqa: F401  (registration)
from .base import METHODS, MethodSpec

__all__ = ["METHODS", "MethodSpec"]
