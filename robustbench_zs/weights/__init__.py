"""The one place that reads and writes weights: checkpoints, foreign files, shipped files.

- :mod:`.base`: the format's names and errors, and the low-level file steps (hash while syncing, tensors to CPU);
- :mod:`.ours`: our checkpoint folder (``weights.safetensors`` + ``meta.json``): :func:`save_checkpoint`,
  :func:`load_checkpoint` (read once, verified against meta.json) and :class:`CheckpointRef`, the value that names a
  checkpoint and carries its identity;
- :mod:`.foreign`: files of other code (the official PMG-AFT / TeCoA scripts, RobustVLM, open_clip), read without
  running code: :func:`load_visual_state`, :func:`load_state_file`, :func:`check_complete`;
- :mod:`.packaged`: :class:`PackagedWeights`, weights shipped inside the package.

Models, methods, the runner, the zoo and the trainer all go through here; nothing imports the trainer to read
weights.
"""

from .base import (
    FORMAT,
    META_FILE,
    WEIGHTS_FILE,
    CheckpointFormatError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from .foreign import apply_visual_state, check_complete, html_head, load_state_file, load_visual_state, looks_like_html
from .ours import CheckpointRef, checkpoint_identity, load_checkpoint, read_meta, save_checkpoint
from .packaged import PackagedWeights

__all__ = [
    "FORMAT",
    "META_FILE",
    "WEIGHTS_FILE",
    "CheckpointFormatError",
    "CheckpointRef",
    "CorruptCheckpointError",
    "PackagedWeights",
    "UnsafeCheckpointError",
    "apply_visual_state",
    "check_complete",
    "checkpoint_identity",
    "html_head",
    "load_checkpoint",
    "load_state_file",
    "load_visual_state",
    "looks_like_html",
    "read_meta",
    "save_checkpoint",
]
