"""The batch mirror answers whether a row is stored without reading it when that is all a delivery asks."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from connector.database import insert_rows
from connector.models import Customer, Shop
from sync.mirror import BatchMirror, Wanted


def test_whether_a_customer_is_stored_is_known_without_reading_their_row_and_a_new_one_counts(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(sa.insert(Shop.__table__).values(id=1, domain="mirror.myshopify.com"))  # type: ignore[attr-defined]
        insert_rows(session, Customer.__table__, [  # type: ignore[attr-defined]
            {"shop_id": 1, "customer_id": 7, "contact_key": "c:7", "deleted": False}])
        session.commit()
        mirror = BatchMirror(session, 1)
        wanted = Wanted()
        wanted.present[Customer] |= {7, 8}
        mirror.prefetch(wanted)
        read: list[str] = []
        sa.event.listen(engine, "before_cursor_execute", lambda _c, _k, statement, *_: read.append(statement))
        assert mirror.exists(Customer, 7)
        assert not mirror.exists(Customer, 8)
        assert read == []  # both answered by the prefetch
        assert not [row for row in session.identity_map.values() if isinstance(row, Customer)]
        mirror.new(Customer, shop_id=1, customer_id=8, contact_key="c:8")
        assert mirror.exists(Customer, 8)  # added by the batch
        assert not mirror.exists(Customer, 9)  # not prefetched: looked up
        assert read and "customers" in read[-1]
        customer = mirror.get(Customer, 7)  # a delivery that needs the row reads it
        assert customer is not None and customer.contact_key == "c:7"
