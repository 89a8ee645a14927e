"""What a results folder turns into for readers: every report reads the records and nothing else.

- :mod:`.leaderboard`: ``leaderboard.md`` and ``leaderboard.csv``, one table per threat and protocol;
- :mod:`.compare`: ``zsbench compare A B``, McNemar tests on the same images, Holm-corrected;
- :mod:`.figures`: the paper's figures 4 and 5 from the records.

The paper's tables (``zsbench reproduce``) are drawn by :mod:`robustbench_zs.paper.render`, from the paper's own
plan of cells.
"""

from .leaderboard import build_tables, records_frame, render_markdown, write_leaderboard

__all__ = ["build_tables", "records_frame", "render_markdown", "write_leaderboard"]
