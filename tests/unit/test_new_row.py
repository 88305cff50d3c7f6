"""`new_row` builds the same row as a table model's constructor, only cheaper; `update_row` changes a row as its
attributes' setters would, only cheaper."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlmodel import Session, SQLModel

from connector.models import (
    Cart,
    Checkout,
    ConsentChange,
    Contact,
    Customer,
    Order,
    Product,
    Refund,
    new_row,
    update_row,
)


@pytest.mark.parametrize(("model", "values"), [
    (Contact, {"shop_id": 1, "contact_key": "c:7", "customer_id": 7, "email": "ana@example.com", "dirty": True,
               "created_at": datetime(2026, 1, 2, tzinfo=UTC)}),
    (Customer, {"shop_id": 1, "customer_id": 7, "contact_key": "c:7"}),
    (Order, {"shop_id": 1, "order_id": 9}),
    (Refund, {"shop_id": 1, "refund_id": 3, "order_id": 9, "amount": Decimal("4.50"),
              "lines": [{"line_item_id": 1, "quantity": 1}]}),
    (Checkout, {"shop_id": 1, "checkout_id": 5}),
    (Cart, {"shop_id": 1, "token": "c-1"}),
    (Product, {"shop_id": 1, "product_id": 11}),
    (ConsentChange, {"shop_id": 1, "contact_key": "c:7", "channel": "email", "state": "subscribed",
                     "source": "customer"}),
])
def test_a_row_built_by_new_row_equals_the_one_the_constructor_builds(model: type[SQLModel],
                                                                      values: dict[str, object]) -> None:
    built, made = model(**values), new_row(model, **values)
    assert {name: getattr(made, name) for name in model.model_fields} == \
        {name: getattr(built, name) for name in model.model_fields}
    assert made.__pydantic_fields_set__ == built.__pydantic_fields_set__


def test_a_row_built_by_new_row_is_stored_with_its_defaults(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.add(new_row(Contact, shop_id=1, contact_key="c:7", email="ana@example.com"))
        session.commit()
    with Session(engine) as session:
        stored = session.get(Contact, (1, "c:7"))
        assert stored is not None and stored.email == "ana@example.com"
        assert (stored.push_state, stored.dirty) == (Contact(shop_id=1, contact_key="x").push_state,
                                                     Contact(shop_id=1, contact_key="x").dirty)


def test_update_row_stores_the_values_that_changed_and_leaves_the_others_unwritten(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.add(Contact(shop_id=1, contact_key="c:7", email="ana@example.com", dirty=False, order_count=2))
        session.commit()
    with Session(engine) as session:
        stored = session.get(Contact, (1, "c:7"))
        assert stored is not None
        update_row(stored, {"email": "ana@example.com", "dirty": True, "order_count": 3})
        changed = sa.inspect(stored).attrs
        assert [name for name in ("email", "dirty", "order_count") if changed[name].history.has_changes()] == \
            ["dirty", "order_count"]
        session.commit()
    with Session(engine) as session:
        stored = session.get(Contact, (1, "c:7"))
        assert stored is not None
        assert (stored.email, stored.dirty, stored.order_count) == ("ana@example.com", True, 3)


def test_update_row_changes_a_new_row_before_it_is_stored(engine: sa.Engine) -> None:
    row = new_row(Customer, shop_id=1, customer_id=7, contact_key="c:7")
    update_row(row, {"email": "ana@example.com", "deleted": False})
    with Session(engine) as session:
        session.add(row)
        session.commit()
    with Session(engine) as session:
        stored = session.get(Customer, (1, 7))
        assert stored is not None and (stored.email, stored.deleted) == ("ana@example.com", False)
