"""The index (SQLModel tables on SQLite or PostgreSQL, migrated by Alembic) and, later, blobs.

Every row carries its project; filtering by project happens here, never in routers.
"""
