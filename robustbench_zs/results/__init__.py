"""Evaluation records: schema, statistics and storage."""

from .schema import SCHEMA_VERSION, per_example, record_key, result_block, validate
from .stats import pack_bools, unpack_bools, wilson_interval
from .store import RecordStore, atomic_write_json, ensure_writable

__all__ = [
    "SCHEMA_VERSION",
    "RecordStore",
    "atomic_write_json",
    "ensure_writable",
    "pack_bools",
    "per_example",
    "record_key",
    "result_block",
    "unpack_bools",
    "validate",
    "wilson_interval",
]
