from __future__ import annotations

from collections.abc import Iterator

import pytest

from api.config import Settings
from tests.support.servers import fresh_postgres_database, require_real_stack


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path) -> Iterator[Settings]:
    from api.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'w.db'}"
        upgrade(url)
        yield Settings(DATABASE_URL=url, home=tmp_path / "home", max_lease_expiries=2)
        return
    require_real_stack()
    with fresh_postgres_database() as url:
        upgrade(url)
        yield Settings(DATABASE_URL=url, home=tmp_path / "home", max_lease_expiries=2)
