"""Evaluation records: the typed record, its schema, statistics and storage."""

from .record import SCHEMA_VERSION, Protocol, Record, validate
from .schema import per_example, record_key, result_block
from .stats import (
    McNemarResult,
    MeanCI,
    bootstrap_mean_ci,
    holm_adjust,
    mcnemar,
    pack_bools,
    unpack_bools,
    wilson_interval,
)
from .store import RecordStore, atomic_write_json, ensure_writable

__all__ = [
    "SCHEMA_VERSION",
    "McNemarResult",
    "MeanCI",
    "Protocol",
    "Record",
    "RecordStore",
    "atomic_write_json",
    "bootstrap_mean_ci",
    "ensure_writable",
    "holm_adjust",
    "mcnemar",
    "pack_bools",
    "per_example",
    "record_key",
    "result_block",
    "unpack_bools",
    "validate",
    "wilson_interval",
]
