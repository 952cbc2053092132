"""Alembic's entry: runs the review store's migrations on the connection `console.migrate` hands over."""

from __future__ import annotations

from alembic import context

from console.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
