"""Errors that reach the user as one line (the CLI turns them into exit code 2, without a traceback)."""

from __future__ import annotations


class ZSBenchError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class UnknownNameError(ZSBenchError, KeyError):
    """A name that is not in a registry; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(ZSBenchError):
    """A dataset root that is missing or does not have the expected on-disk layout."""
