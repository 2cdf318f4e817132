"""Storage: the only package that imports SQLAlchemy. One code path for SQLite and Postgres."""

from banditd.store.engine import Database, describe_database, migrate, sqlite_file
from banditd.store.parts import Store

__all__ = ["Database", "Store", "describe_database", "migrate", "sqlite_file"]
