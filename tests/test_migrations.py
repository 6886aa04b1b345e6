"""Alembic upgrade and downgrade run for real, on SQLite (batch mode) and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from api.migrate import downgrade, upgrade
from models import Base
from models.session import make_engine
from tests.support.servers import fresh_postgres_database, require_real_stack


def _roundtrip(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    downgrade(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_sqlite_upgrade_downgrade(tmp_path):
    _roundtrip(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.realstack
def test_postgres_upgrade_downgrade():
    require_real_stack()
    with fresh_postgres_database() as url:
        _roundtrip(url)


def test_models_match_migrations(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
