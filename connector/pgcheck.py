"""`python -m connector.pgcheck URL`: fail fast, with a clear message, when the test PostgreSQL is unreachable."""

from __future__ import annotations

import sys

import sqlalchemy as sa

from connector.database import make_engine


def main(url: str) -> int:
    try:
        with make_engine(url).connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        print(f"PostgreSQL for the tests is not reachable at {url}: {type(exc).__name__}. "
              "Start it (see README, Tests) or set PG_TEST_URL.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"))
