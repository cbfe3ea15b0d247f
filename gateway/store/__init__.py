"""Persistence: agents, phone numbers / trunks, the call log and call events (SQLite file or PostgreSQL)."""
from .durable import StoreUnavailableError
from .store import DuplicateError, NotFoundError, Store

__all__ = ["Store", "DuplicateError", "NotFoundError", "StoreUnavailableError"]
