"""Storage: the only package that imports SQLAlchemy. One code path for SQLite and Postgres."""

from banditd.store.engine import Database, describe_database, migrate, sqlite_file
from banditd.store.repository import Repository

__all__ = ["Database", "Repository", "describe_database", "migrate", "sqlite_file"]
