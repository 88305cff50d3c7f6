"""What a merchant does to the program: adjust a balance, change the rules, recompute, look at a ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from connector.loyalty_admin import (
    LoyaltyAdminError,
    adjust_points,
    buyer_loyalty,
    configure_loyalty,
    recompute_program,
)
from connector.models import Shop
from mappings.shop_config import ConfigError
from tests.integration.harness import SHOP, iter_connector
from tests.integration.test_cli import _connector
from tests.integration.test_loyalty_pipeline import Store
from tests.payloads import customer, order


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[Store]:
    for connector in iter_connector(engine):
        yield Store(connector)


def _buyer(store: Store) -> None:
    store.post("customers/create", customer(1, "ana@example.com"))
    store.post("orders/create", order(9001, total="100.00"))
    store.sync()  # 50 signup + 100 + 50 first order = 200


def test_an_adjustment_is_kept_with_its_reason_announced_once_and_reaches_brevo(store: Store) -> None:
    _buyer(store)
    before, after = adjust_points(store.connector.engine, SHOP, "ana@example.com", 25, "parcel arrived late",
                                  now=store.clock.now())
    assert (before, after) == (200, 225)
    store.sync()
    assert store.attributes("ana@example.com")["LOYALTY_POINTS"] == 225
    [(_, event)] = [e for e in store.events("loyalty_points_earned") if e[1]["kind"] == "adjustment"]
    assert event["points"] == 25 and event["reason"] == "parcel arrived late" and event["balance"] == 225
    store.sync()  # rebuilding the contact keeps the adjustment: it is part of what the buyer is owed
    assert store.attributes("ana@example.com")["LOYALTY_POINTS"] == 225


def test_an_adjustment_below_zero_is_refused_and_changes_nothing(store: Store) -> None:
    _buyer(store)
    entries = store.ledger("c:1")
    with pytest.raises(LoyaltyAdminError, match="has 200 points: taking 201 would leave them below zero"):
        adjust_points(store.connector.engine, SHOP, "ana@example.com", -201, "typo", now=store.clock.now())
    assert store.ledger("c:1") == entries
    assert adjust_points(store.connector.engine, SHOP, "1", -200, "fraud", now=store.clock.now()) == (200, 0)


def test_invalid_rules_name_the_key_and_the_previous_rules_stay_in_force(store: Store) -> None:
    _buyer(store)
    with pytest.raises(ConfigError, match=r"tiers\.levels\[1\]\.threshold: thresholds must increase"):
        configure_loyalty(store.connector.engine, SHOP, '[tiers]\nlevels = [{name = "A", threshold = 0}, '
                                                        '{name = "B", threshold = 0}]', now=store.clock.now())
    with pytest.raises(ConfigError, match="earn.points_per_dollar: unknown key"):
        configure_loyalty(store.connector.engine, SHOP, "[earn]\npoints_per_dollar = 2", now=store.clock.now())
    with Session(store.connector.engine) as session:
        assert session.execute(sa.select(Shop.loyalty_rules)).scalar_one() is None


def test_new_rules_recompute_every_balance_silently_and_the_builder_then_has_nothing_to_correct(store: Store) -> None:
    _buyer(store)
    store.post("orders/create", order(9002, customer_id=2, email="bo@example.com", total="40.00"))
    store.sync()
    events = len(store.events())
    now = store.clock.now()
    configure_loyalty(store.connector.engine, SHOP, '[earn]\npoints_per_unit = 3\nsignup_bonus = 0\n'
                                                    '[tiers]\nlevels = [{name = "Member", threshold = 0}, '
                                                    '{name = "Gold", threshold = 300}]', now=now)
    done = recompute_program(store.connector.engine, SHOP, now=now)
    assert (done.buyers, done.tiers_changed) == (2, 2)  # both move from Bronze: one to Member, one to Gold
    written = len(store.ledger("c:1")) + len(store.ledger("c:2"))
    store.sync()
    assert len(store.ledger("c:1")) + len(store.ledger("c:2")) == written
    assert store.attributes("ana@example.com")["LOYALTY_POINTS"] == 350  # 300 + 50 first order
    assert store.attributes("ana@example.com")["LOYALTY_TIER"] == "Gold"
    assert store.attributes("bo@example.com")["LOYALTY_POINTS"] == 170
    assert len(store.events()) == events  # a rules change is not news
    assert recompute_program(store.connector.engine, SHOP, now=now).entries == 0  # and again: nothing to do


def test_a_buyer_ledger_shows_every_entry_with_its_reason(store: Store) -> None:
    _buyer(store)
    found = buyer_loyalty(store.connector.engine, SHOP, "ana@example.com", now=store.clock.now())
    assert found.view.state.balance == 200
    assert [(e.key, e.points) for e in found.ledger] == [("signup", 50), ("order:9001:earn", 100),
                                                         ("first_order", 50)]
    with pytest.raises(LoyaltyAdminError, match="no buyer nobody@example.com"):
        buyer_loyalty(store.connector.engine, SHOP, "nobody@example.com", now=store.clock.now())


def test_the_cli_refuses_invalid_rules_with_the_key_and_exit_code_2(tmp_path: Path) -> None:
    rules = tmp_path / "loyalty.toml"
    rules.write_text("[expiry]\nmonths = -1\n")
    result = _connector("loyalty", "configure", "--shop", "my-store", "--file", str(rules),
                        env={"DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "expiry.months: must be a whole number, 0 or more" in result.stderr
    assert "previous rules stay in force" in result.stderr


def test_a_shop_recomputed_batch_by_batch_gets_every_correction_once(store: Store,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(1, 7):
        store.post("orders/create", order(9100 + n, customer_id=n, email=f"b{n}@example.com", total=f"{n}00.00"))
    store.sync()
    now = store.clock.now()
    configure_loyalty(store.connector.engine, SHOP, "[earn]\npoints_per_unit = 2\n", now=now)
    monkeypatch.setattr("connector.loyalty_admin.BUYERS_PER_BATCH", 4)  # two batches, written while computed
    done = recompute_program(store.connector.engine, SHOP, now=now)
    assert done.buyers == 6 and done.entries == 6  # one correction per order: its points doubled
    assert [sum(p for _, p in store.ledger(f"c:{n}")) for n in range(1, 7)] == [n * 200 + 50 for n in range(1, 7)]
