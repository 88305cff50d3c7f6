"""The operator contract: missing secrets are one clear line and exit code 2; commands do what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import connector.models  # noqa: F401


def _connector(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SHOPIFY_", "BREVO_", "CONNECTOR_"))}
    clean.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-c", "from connector.cli import main; main()", *args],
                          env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_a_missing_secret_is_one_line_naming_the_variable_and_exit_code_2(tmp_path: Path) -> None:
    result = _connector("web", env={"DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "SHOPIFY_API_SECRET" in result.stderr


def test_a_placeholder_secret_is_refused_like_a_missing_one(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "SHOPIFY_SHOP": "my-store",
           "SHOPIFY_ACCESS_TOKEN": "shpat_x", "BREVO_API_KEY": "changeme"}
    result = _connector("worker", "--until-idle", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "BREVO_API_KEY" in result.stderr and "placeholder" in result.stderr


def test_the_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'c.db'}\nSHOPIFY_SHOP=my-store\n"
                                   "SHOPIFY_ACCESS_TOKEN=shpat_x\n")
    result = _connector("worker", "--until-idle", env={}, cwd=tmp_path)
    assert result.returncode == 2 and "BREVO_API_KEY" in result.stderr


def test_shops_add_needs_the_encryption_key_and_stores_tokens_encrypted(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    args = ("shops", "add", "--domain", "my-store", "--access-token", "shpat_secret_token",
            "--brevo-api-key", "xkeysib-secret-key")
    refused = _connector(*args, env={"DATABASE_URL": f"sqlite:///{db}"}, cwd=tmp_path)
    assert refused.returncode == 2 and "CONNECTOR_SECRET_KEY" in refused.stderr
    added = _connector(*args, env={"DATABASE_URL": f"sqlite:///{db}", "CONNECTOR_SECRET_KEY": "a-long-random-key"},
                       cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    raw = db.read_bytes()
    assert b"my-store.myshopify.com" in raw
    assert b"shpat_secret_token" not in raw and b"xkeysib-secret-key" not in raw


def test_db_upgrade_builds_the_schema_of_the_models(migrated: str) -> None:
    # `migrated` ran `alembic upgrade head`: the result must match the models exactly.
    engine = sa.create_engine(migrated.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def test_an_invalid_shop_configuration_is_refused_naming_the_key_and_the_old_one_stays(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    env = {"DATABASE_URL": db, "CONNECTOR_SECRET_KEY": "a-long-random-key"}
    assert _connector("shops", "add", "--domain", "my-store", "--access-token", "shpat_t", "--brevo-api-key",
                      "xkeysib-k", env=env, cwd=tmp_path).returncode == 0
    (tmp_path / "good.toml").write_text('[attributes]\nTOTAL_SPENT = "LIFETIME_VALUE"\n')
    (tmp_path / "bad.toml").write_text("[lifecycle]\nwinback_days = 3\n")
    good = _connector("shops", "configure", "--shop", "my-store", "--file", "good.toml", env=env, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    bad = _connector("shops", "configure", "--shop", "my-store", "--file", "bad.toml", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "lifecycle.winback_days" in bad.stderr
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT config FROM shops")).scalar_one()
    engine.dispose()
    assert "LIFETIME_VALUE" in stored and "winback_days" not in stored


def test_contacts_explain_shows_the_figures_their_reasons_and_the_events_sent(engine: sa.Engine, tmp_path: Path
                                                                              ) -> None:
    from tests.integration.harness import SHOP, iter_connector
    from tests.payloads import order, refund

    for running in iter_connector(engine):
        running.post("orders/create", order(4101, total="80.00", refunds=[refund(41010, 4101, "30.00")]))
        running.post("orders/create", order(4102, total="20.00", cancelled=True))
        running.sync()
        url = engine.url.render_as_string(hide_password=False)
        result = _connector("contacts", "explain", "ana@example.com", "--shop", SHOP,
                            env={"DATABASE_URL": url}, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        out = " ".join(result.stdout.split())
        assert "total spent 50.00 = order totals 80.00 - refunds 30.00" in out
        assert "4102 (cancelled)" in out
        assert f"{SHOP}:order_completed:4101" in out and "TOTAL_SPENT" in out
        unknown = _connector("contacts", "explain", "nobody@example.com", "--shop", SHOP,
                             env={"DATABASE_URL": url}, cwd=tmp_path)
        assert unknown.returncode == 2 and "no buyer nobody@example.com" in unknown.stderr
