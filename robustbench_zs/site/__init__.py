"""``zsbench site``: a static leaderboard website from accepted submissions, local records and published numbers."""

from .build import MARKER, build_site

__all__ = ["MARKER", "build_site"]
