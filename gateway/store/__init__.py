"""Persistence: agents, phone numbers / trunks, the call log and call events (SQLite file or PostgreSQL)."""
from .store import DuplicateError, NotFoundError, Store

__all__ = ["Store", "DuplicateError", "NotFoundError"]
