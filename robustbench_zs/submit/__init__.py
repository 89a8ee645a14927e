"""``zsbench submit``: a method's records under one protocol, with its card and checkpoint, packaged for review."""

from .package import CARD_TEMPLATE, SCHEMA_PATH, check_submission, submit
from .protocols import PROTOCOLS, get_protocol, protocol_of

__all__ = ["CARD_TEMPLATE", "PROTOCOLS", "SCHEMA_PATH", "check_submission", "get_protocol", "protocol_of", "submit"]
