"""Persistence: the index (SQLModel tables, Alembic migrations), blob stores, and their rules.

Every row and every blob key carries its project; filtering by project happens here
(`index_repo`), never in routers. Blob first, index second; the sweep removes orphans.
"""
