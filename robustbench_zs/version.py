"""The package version: one place, imported by everything that states it (records, downloads, --version)."""

__version__ = "0.1.0"
