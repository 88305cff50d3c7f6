"""The mirror as one inbox batch sees it: the rows the batch touches, fetched in a few set queries up front,
then served from memory; the rows it writes in bulk (order lines, outbox) go out in one statement each.

Every lookup is exact whatever was prefetched: a row or a search the prefetch did not cover is read from the
database on first use and remembered (including "there is none"). Searches by a column value remember which
values they covered; a row written in the batch is in memory, so a search over memory sees it too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlmodel import SQLModel, col

from connector.clock import as_utc
from connector.database import chunked, insert_new, insert_rows, one_of
from connector.models import (
    Cart,
    Checkout,
    Contact,
    Customer,
    Order,
    OrderLine,
    OutboxEntry,
    Product,
    Refund,
    new_row,
)

M = TypeVar("M", bound=SQLModel)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The primary key of each mirror table, after shop_id.
_IDENT: dict[type[SQLModel], str] = {
    Customer: "customer_id", Order: "order_id", Refund: "refund_id", Product: "product_id",
    Checkout: "checkout_id", Cart: "token", Contact: "contact_key",
}


# The order in which a batch's new rows are written.
_NEW_ORDER: tuple[type[SQLModel], ...] = (Customer, Product, Order, Refund, Checkout, Cart, Contact)


@dataclass
class Wanted:
    """What a batch of parsed deliveries will look up, gathered before any of them is applied."""

    rows: dict[type[SQLModel], set[Any]] = field(default_factory=lambda: defaultdict(set))
    present: dict[type[SQLModel], set[Any]] = field(default_factory=lambda: defaultdict(set))  # `exists` alone
    order_keys: set[str] = field(default_factory=set)  # contact keys whose orders are counted
    refunds_of: set[int] = field(default_factory=set)  # order ids
    # A checkout delivery looks for the order that completed it; an order for the checkouts it completes;
    # a cart for the checkout that carries it.
    orders_by_checkout: dict[str, set[Any]] = field(default_factory=lambda: defaultdict(set))
    checkouts_by: dict[str, set[Any]] = field(default_factory=lambda: defaultdict(set))
    customers_by: dict[str, set[Any]] = field(default_factory=lambda: defaultdict(set))  # email, phone

    def add(self, model: type[SQLModel], *idents: Any) -> None:
        self.rows[model].update(i for i in idents if i)

    def contact(self, *keys: str | None) -> None:
        self.add(Contact, *keys)

    def buyer(self, key: str | None, email: str | None, phone: str | None) -> None:
        """A buyer's key, the guest keys a customer would absorb, and the customer a guest may be (a customer's
        own key is theirs: no customer is looked for by their email or phone)."""
        self.contact(key, f"e:{email}" if email else None, f"p:{phone}" if phone else None)
        if key and not key.startswith("c:"):
            self.customers_by["email"].add(email)
            self.customers_by["phone"].add(phone)


class BatchMirror:
    def __init__(self, session: Session, shop_id: int) -> None:
        self.session, self.shop_id = session, shop_id
        self._rows: dict[type[SQLModel], dict[Any, Any]] = defaultdict(dict)  # ident -> row, or None: absent
        self._added: set[tuple[type[SQLModel], Any]] = set()
        # Rows this batch creates, written by `write` in one statement per table (`insert_rows`): the unit of
        # work's flush costs several times more per row, and a backfill creates them by the hundred thousand.
        self._new: dict[type[SQLModel], list[Any]] = defaultdict(list)
        self._appended: dict[type[SQLModel], list[dict[str, Any]]] = defaultdict(list)  # rows never read back
        self._written: list[Any] = []  # new rows `write` inserted, for `attach`
        self._covered: dict[str, set[Any]] = defaultdict(set)
        self._present: dict[type[SQLModel], set[Any]] = defaultdict(set)  # stored, not read (`exists`)
        # Orders per contact key as stored when first looked at: order id -> counts as a purchase.
        self._orders_by_key: dict[str, dict[int, bool]] = {}
        self._lines: dict[int, list[dict[str, Any]]] = {}
        self._outbox: dict[str, dict[str, Any]] = {}

    # --- rows by primary key ----------------------------------------------------------------

    def get(self, model: type[M], ident: Any) -> M | None:
        table = self._rows[model]
        if ident in table:
            row: M | None = table[ident]
            return row
        row = self.session.get(model, (self.shop_id, ident))
        table[ident] = row
        return row

    def exists(self, model: type[SQLModel], ident: Any) -> bool:
        """Whether the row is stored or added, without reading it when the prefetch found it stored."""
        if ident not in self._rows[model] and ident in self._present[model]:
            return True
        return self.get(model, ident) is not None

    def add(self, row: M) -> M:
        """A row this batch creates: served from memory to the batch, and written by `write`. Until then the
        database does not see it (a statement of the batch's own must not look for it there)."""
        model = type(row)
        ident = getattr(row, _IDENT[model])
        self._rows[model][ident] = row
        self._added.add((model, ident))
        self._new[model].append(row)
        return row

    def new(self, model: type[M], **values: Any) -> M:
        """A new row of `model`, added to the batch."""
        return self.add(new_row(model, **values))

    def append(self, model: type[SQLModel], **values: Any) -> None:
        """A row the batch never reads back (a consent change), written by `write`. Every call for one model
        names the same columns."""
        self._appended[model].append(values)

    def is_new(self, row: SQLModel) -> bool:
        """Added by this batch (not read from the database)."""
        model = type(row)
        return (model, getattr(row, _IDENT[model])) in self._added

    def _cached(self, model: type[M]) -> Iterator[M]:
        return (row for row in self._rows[model].values() if row is not None)

    def _load(self, model: type[M], column: str, values: Iterable[Any]) -> None:
        """Read the rows whose `column` is among `values`; by primary key, also remember the absent."""
        values = {v for v in values if v is not None}
        table = self._rows[model]
        by_key = column == _IDENT[model]
        if by_key:
            values = {v for v in values if v not in table}
        if not values:
            return
        for chunk in chunked(values):
            statement = sa.select(model).where(col(model.shop_id) == self.shop_id,  # type: ignore[attr-defined]
                                               one_of(getattr(model, column), chunk, self.session))
            for row in self.session.execute(statement).scalars():
                table.setdefault(getattr(row, _IDENT[model]), row)
        if by_key:
            for value in values:
                table.setdefault(value, None)

    def _find(self, model: type[SQLModel], idents: Iterable[Any]) -> None:
        """Which of these rows are stored, by primary key, without reading them: an order looks for its customer
        only to start one not known yet, and a backfill's orders read their customers, as ORM rows, twice over
        (200,000 at 100,000 customers) only to learn that they were there."""
        table, ident = self._rows[model], _IDENT[model]
        missing = {v for v in idents if v is not None and v not in table and v not in self._present[model]}
        key = getattr(model, ident)
        for chunk in chunked(missing):
            found = set(self.session.connection().execute(sa.select(key).where(
                col(model.shop_id) == self.shop_id, one_of(key, chunk, self.session))).scalars())  # type: ignore[attr-defined]
            self._present[model] |= found
            for value in chunk:
                if value not in found:
                    table[value] = None  # absent, as a read by key remembers it

    def _search(self, model: type[M], column: str, values: Iterable[Any]) -> None:
        """Every stored row whose `column` is one of `values` is in memory afterwards."""
        covered = self._covered[f"{model.__name__}.{column}"]
        missing = {v for v in values if v is not None} - covered
        if missing:
            self._load(model, column, missing)
            covered |= missing

    # --- prefetch ---------------------------------------------------------------------------

    def prefetch(self, wanted: Wanted) -> None:
        """A handful of set queries for what the batch will look up; contacts last, as the orders and
        checkouts read first name contact keys of their own (a refund's buyer, an order's previous buyer)."""
        for model in (Customer, Order, Refund, Product, Checkout, Cart):
            self._load(model, _IDENT[model], wanted.rows.get(model, ()))
        for present, idents in wanted.present.items():
            self._find(present, idents)
        for name in ("checkout_id", "checkout_token", "cart_token"):
            self._search(Order, name, wanted.orders_by_checkout.get(name, ()))
        self._search(Refund, "order_id", wanted.refunds_of)
        for name in ("token", "cart_token", "checkout_id"):
            self._search(Checkout, name, wanted.checkouts_by.get(name, ()))
        for name in ("email", "phone"):
            self._search(Customer, name, wanted.customers_by.get(name, ()))
        keys = set(wanted.rows.get(Contact, ()))
        keys |= {o.contact_key for o in self._cached(Order)} | {c.contact_key for c in self._cached(Checkout)}
        self._load(Contact, "contact_key", keys)
        self._index_orders(wanted.order_keys)

    # --- searches ---------------------------------------------------------------------------

    def customer_with(self, *, email: str | None = None, phone: str | None = None) -> Customer | None:
        """The (not deleted) customer with this email, else this phone, among those stored or added."""
        for column, value in (("email", email), ("phone", phone)):
            if value:
                self._search(Customer, column, [value])
                for row in self._cached(Customer):
                    if getattr(row, column) == value and not row.deleted:
                        return row
        return None

    def checkouts_completed_by(self, token: str | None, cart_token: str | None,
                               checkout_id: int | None) -> list[Checkout]:
        if not (token or cart_token or checkout_id):
            return []  # nothing to match (most orders of a backfill): no walk through the batch's checkouts
        self._search(Checkout, "token", [token])
        self._search(Checkout, "cart_token", [cart_token])
        self._search(Checkout, "checkout_id", [checkout_id])
        return sorted((c for c in self._cached(Checkout)
                       if (token and c.token == token) or (cart_token and c.cart_token == cart_token)
                       or (checkout_id and c.checkout_id == checkout_id)), key=lambda c: c.checkout_id)

    def order_completing(self, checkout_id: int, token: str | None, cart_token: str | None) -> Order | None:
        self._search(Order, "checkout_id", [checkout_id])
        self._search(Order, "checkout_token", [token])
        self._search(Order, "cart_token", [cart_token])
        found = [o for o in self._cached(Order) if o.checkout_id == checkout_id
                 or (token and o.checkout_token == token) or (cart_token and o.cart_token == cart_token)]
        return min(found, key=lambda o: o.order_id) if found else None

    def checkout_for_cart(self, cart_token: str) -> Checkout | None:
        """The newest checkout with a buyer that carries this cart."""
        self._search(Checkout, "cart_token", [cart_token])
        found = [c for c in self._cached(Checkout) if c.cart_token == cart_token and c.contact_key]
        # as_utc: a row read back from SQLite has a naive time, one written in this batch an aware one.
        return max(found, key=lambda c: (c.updated_at_src is not None, as_utc(c.updated_at_src) or _EPOCH,
                                         c.checkout_id), default=None)

    def refunds_of(self, order_id: int) -> list[Refund]:
        self._search(Refund, "order_id", [order_id])
        return sorted((r for r in self._cached(Refund) if r.order_id == order_id), key=lambda r: r.refund_id)

    def products(self, ids: Iterable[int | None]) -> dict[int, Product]:
        wanted = {i for i in ids if i}
        self._load(Product, "product_id", wanted)
        table = self._rows[Product]
        return {i: table[i] for i in wanted if table.get(i) is not None}

    def _index_orders(self, keys: Iterable[str | None]) -> None:
        missing = {k for k in keys if k} - self._orders_by_key.keys()
        for chunk in chunked(missing):
            for key in chunk:
                self._orders_by_key[key] = {}
            rows = self.session.execute(
                sa.select(col(Order.contact_key), col(Order.order_id),
                          sa.and_(col(Order.cancelled_at).is_(None), col(Order.test).is_(False)))
                .where(col(Order.shop_id) == self.shop_id, one_of(col(Order.contact_key), chunk, self.session)))
            for key, order_id, counted in rows:
                self._orders_by_key[key][order_id] = bool(counted)

    def purchases_besides(self, key: str, order_id: int) -> int:
        """How many other orders of this buyer count as purchases (not cancelled, not test)."""
        self._index_orders([key])
        orders = self._rows[Order]
        count = 0
        for other, counted in self._orders_by_key[key].items():
            row = orders.get(other)
            if other != order_id and row is None and counted:
                count += 1
        for row in self._cached(Order):
            if (row.order_id != order_id and row.contact_key == key and row.cancelled_at is None
                    and not row.test):
                count += 1
        return count

    def orders_moved(self, from_key: str, to_key: str) -> None:
        """A guest's orders and checkouts now belong to the customer: called before the stored ones are
        updated in the tables, it moves those the batch has not written yet."""
        self._index_orders([from_key, to_key])
        self._orders_by_key[to_key].update(self._orders_by_key.pop(from_key))
        self._orders_by_key[from_key] = {}
        for model in (Order, Checkout):
            for new in self._new.get(model, ()):
                if new.contact_key == from_key:
                    new.contact_key = to_key
        for row in self._outbox.values():
            if row["contact_key"] == from_key:
                row["contact_key"] = to_key

    # --- bulk writes ------------------------------------------------------------------------

    def attach(self) -> None:
        """The rows `write` inserted join the session as stored rows, so that a later change to one in the same
        session is saved too. Only once they are there for good: attached inside a savepoint that then rolls
        back, they would stay in the session as if stored."""
        for row in self._written:
            make_transient_to_detached(row)
            self.session.add(row)
        self._written = []

    def replace_lines(self, order: Order, lines: list[dict[str, Any]]) -> None:
        """The order's lines are these: stored ones are deleted, the new ones written with the batch."""
        if not self.is_new(order):
            self.session.execute(sa.delete(OrderLine).where(col(OrderLine.shop_id) == self.shop_id,
                                                            col(OrderLine.order_id) == order.order_id))
        self._lines[order.order_id] = lines

    def pending_lines(self, order_id: int) -> list[dict[str, Any]] | None:
        return self._lines.get(order_id)

    def queue_outbox(self, rows: Iterable[dict[str, Any]]) -> None:
        """Outbox rows written with the batch; the first of one idempotency key wins, as in the table."""
        for row in rows:
            self._outbox.setdefault(row["idempotency_key"], row)

    def write(self) -> None:
        """Write the batch's new rows and bulk rows: one statement per table. The new rows stay out of the
        session (see `attach`)."""
        for model in _NEW_ORDER:
            rows = self._new.pop(model, None)
            if rows:
                table = _table(model)
                insert_rows(self.session, table, [row.__dict__ for row in rows], columns=table.columns.keys())
                self._written += rows
        for appended, values in self._appended.items():
            insert_rows(self.session, _table(appended), values)
        self._appended.clear()
        if self._lines:
            rows = [row for lines in self._lines.values() for row in lines]
            if rows:
                insert_rows(self.session, _table(OrderLine), rows)
            # Written now: a later replacement in the same session must delete them.
            for order_id in self._lines:
                self._added.discard((Order, order_id))
            self._lines.clear()
        if self._outbox:
            insert_outbox(self.session, list(self._outbox.values()))
            self._outbox.clear()


def _table(model: type[SQLModel]) -> sa.Table:
    table: sa.Table = model.__table__  # type: ignore[attr-defined]
    return table


def insert_outbox(session: Session, rows: list[dict[str, Any]]) -> None:
    """Unique per (shop, idempotency key): a key already there is left alone (exactly once). Keys are new but for
    a replay or a re-run (`mostly_new`)."""
    insert_new(session, OutboxEntry, rows, ["shop_id", "idempotency_key"], mostly_new=True)
