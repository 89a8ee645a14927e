"""Weights shipped inside this package, under a pretrained tag of their own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside this package under a pretrained tag of their own (no download).

    Attributes:
        file: the safetensors file, relative to the package folder.
        sha256: its sha256, checked each time it is loaded.
        tokenizer: ``module:callable`` of the tokenizer the text tower was trained with (None: open_clip's).
        command: the command that made the file, bit for bit.
    """

    file: str
    sha256: str
    tokenizer: str | None = None
    command: str = ""

    @property
    def path(self) -> Path:
        return Path(__file__).resolve().parent.parent / self.file
