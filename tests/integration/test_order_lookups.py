"""Orders looked up by the checkout or cart they completed: through indexes that hold only the orders carrying one
(a backfill's orders carry none, and each would otherwise have added an entry to three indexes)."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from connector.database import insert_rows, one_of
from connector.models import Order, Shop
from tests.integration.indexes import index_definition, index_entries

LOOKUPS = (("ix_orders_checkout", "checkout_id", 77), ("ix_orders_checkout_token", "checkout_token", "tok-77"),
           ("ix_orders_cart_token", "cart_token", "cart-77"))


def _orders(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(sa.insert(Shop.__table__).values(id=1, domain="lookups.myshopify.com"))  # type: ignore[attr-defined]
        money = {name: Decimal("1") for name in ("subtotal", "total", "total_tax", "total_discounts", "total_shipping")}
        rows = [{"shop_id": 1, "order_id": n, "test": False, "checkout_id": None, "checkout_token": None,
                 "cart_token": None, **money} for n in range(1, 201)]
        rows[76].update(checkout_id=77, checkout_token="tok-77", cart_token="cart-77")
        insert_rows(session, Order.__table__, rows)  # type: ignore[attr-defined]
        session.commit()


def _plan(session: Session, statement: sa.Select[tuple[int]]) -> str:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET LOCAL enable_seqscan = off"))  # a table this small is read whole otherwise
        compiled = statement.compile(session.get_bind())
        return "\n".join(session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars())
    text = str(statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    return "\n".join(row[-1] for row in session.execute(sa.text("EXPLAIN QUERY PLAN " + text)))


@pytest.mark.parametrize(("index", "column", "value"), LOOKUPS)
def test_an_order_is_found_by_the_checkout_or_cart_it_completed_through_its_index(
        engine: Engine, index: str, column: str, value: object) -> None:
    _orders(engine)
    with Session(engine) as session:
        searched = getattr(Order, column)
        statement = sa.select(Order.order_id).where(Order.shop_id == 1, one_of(searched, [value, value], session))
        assert session.execute(statement).scalars().all() == [77]
        assert index in _plan(session, statement)


@pytest.mark.parametrize(("index", "column", "value"), LOOKUPS)
def test_the_checkout_and_cart_indexes_hold_only_orders_that_carry_one(
        engine: Engine, index: str, column: str, value: object) -> None:
    _orders(engine)
    with Session(engine) as session:
        assert index_entries(session, "orders", index, f"shop_id = 1 AND {column} IS NOT NULL") == 1  # of 200 orders
        definition = index_definition(session, index)
    assert f"WHERE {column} IS NOT NULL" in definition.replace("(", "").replace(")", "")
