"""Leaderboards rendered from a results folder."""

from .build import build_tables, records_frame, render_markdown, write_leaderboard

__all__ = ["build_tables", "records_frame", "render_markdown", "write_leaderboard"]
