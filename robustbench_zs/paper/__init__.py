"""Reproducing the PMG-AFT paper (Wang et al., CVPR 2024): its tables and figures, our numbers beside the paper's.

- :mod:`.targets`: the bundled numbers of tables 1-13, what each target is (rows, options, columns), and flags on
  paper cells that look wrong;
- :mod:`.plan`: the cells a target needs and the runs behind them; :mod:`.match`: the record of each cell;
- :mod:`.render`: the Markdown table; :mod:`.estimate`: ``--dry-run`` with measured costs;
- :mod:`.reproduce`: running what is missing; the ``zsbench reproduce`` subcommand is :mod:`robustbench_zs.cli.reproduce`.
"""

from .estimate import dry_run_report
from .match import Found, match, missing_cells
from .plan import Cell, find_checkpoint, plan
from .render import render
from .reproduce import ReproduceResult, reproduce
from .targets import Target, flags_for, get_target, paper_flags, paper_value, targets

__all__ = [
    "Cell",
    "Found",
    "ReproduceResult",
    "Target",
    "dry_run_report",
    "find_checkpoint",
    "flags_for",
    "get_target",
    "match",
    "missing_cells",
    "paper_flags",
    "paper_value",
    "plan",
    "render",
    "reproduce",
    "targets",
]
