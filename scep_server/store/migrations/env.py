"""Alembic environment: runs on the connection handed in by scep_server.store.migrate."""
from alembic import context

from scep_server.store.schema import combined_metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always driven through scep_server.store.migrate
    raise RuntimeError("run migrations with `scep-server db upgrade`")

context.configure(connection=connection, target_metadata=combined_metadata(),
                  render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
with context.begin_transaction():
    context.run_migrations()
