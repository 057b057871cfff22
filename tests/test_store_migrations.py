import sqlalchemy as sa

from scep_server.store import tables


async def test_migrated_schema_has_core_tables(engine):
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    for t in tables.metadata.tables:
        assert t in names
