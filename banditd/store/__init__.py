"""Storage: the only package that imports SQLAlchemy. One code path for SQLite and Postgres."""

from banditd.store.engine import Database, migrate
from banditd.store.repository import Repository

__all__ = ["Database", "Repository", "migrate"]
