from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from tests.integration.harness import Connector, iter_connector


@pytest.fixture
def connector(engine: Engine) -> Iterator[Connector]:
    yield from iter_connector(engine)
