"""The database tables: shops, the webhook inbox, the store mirror, contact state, the outbox, dead letters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic_core import PydanticUndefined
from sqlalchemy.engine import Dialect
from sqlalchemy.orm.attributes import set_attribute
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlmodel import Field, SQLModel

M = TypeVar("M", bound=SQLModel)


class Money(sa.types.TypeDecorator[Decimal]):
    """Exact money: NUMERIC on PostgreSQL, canonical text on SQLite (whose NUMERIC is a float)."""

    impl = sa.String(40)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.Numeric(20, 4))
        return dialect.type_descriptor(sa.String(40))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        return value if dialect.name == "postgresql" else str(Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(str(value))


UTCDateTime = sa.DateTime(timezone=True)


def _money(nullable: bool = False, default: Decimal | None = Decimal("0")) -> Any:
    return Field(default=default, sa_type=Money, nullable=nullable)


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.JSON, nullable=nullable)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


class Shop(SQLModel, table=True):
    __tablename__ = "shops"

    id: int | None = Field(default=None, primary_key=True)
    domain: str = Field(max_length=255, unique=True)
    status: str = Field(default="active", max_length=20)  # active | paused | uninstalled
    paused_reason: str | None = None
    access_token_enc: str | None = None
    # Expiring offline tokens (token exchange): the access token's end, and the refresh token that renews it.
    access_token_expires_at: datetime | None = _ts()
    refresh_token_enc: str | None = None
    refresh_token_expires_at: datetime | None = _ts()
    installed_scopes: str | None = None  # what the merchant granted, as Shopify said at install
    # A merchant's own app registered by its client credentials: each token (a day long) is exchanged anew.
    client_id: str | None = Field(default=None, max_length=100)
    client_secret_enc: str | None = None
    brevo_api_key_enc: str | None = None
    currency: str | None = Field(default=None, max_length=3)
    brevo_list_id: int | None = None
    brevo_ready_at: datetime | None = _ts()  # attributes and list created in Brevo
    setup_due_at: datetime | None = _ts()  # when to try the Brevo set-up again after a failure
    setup_error: str | None = None
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_token: str | None = Field(default=None, max_length=40)
    lease_expires_at: datetime | None = _ts()
    brevo_pacing: dict[str, Any] | None = _json()
    last_webhook_at: datetime | None = _ts()
    last_push_at: datetime | None = _ts()
    created_at: datetime | None = _ts()
    config: dict[str, Any] | None = _json()  # mappings.shop_config.ShopConfig.to_dict(); None: defaults
    rfm_thresholds: dict[str, Any] | None = _json()  # mappings.rfm.RfmThresholds.to_json()
    rfm_due_at: datetime | None = _ts()  # next daily recompute of RFM quintiles and the shop's median cadence
    median_days_between: Decimal | None = _money(nullable=True, default=None)  # over repeat buyers
    brevo_options: list[str] | None = _json()  # the choices CATEGORIES_PURCHASED has in Brevo
    loyalty_rules: dict[str, Any] | None = _json()  # loyalty.rules.LoyaltyRules.to_dict(); None: defaults
    loyalty_started_at: datetime | None = _ts()  # birthdays before this earn nothing
    loyalty_rules_at: datetime | None = _ts()  # the current rules took effect: what was before is history
    uninstalled_at: datetime | None = _ts()  # app/uninstalled: no work, no tokens; data kept until shop/redact


# Shopify's app lifecycle and privacy topics: stored with status `lifecycle` (not `pending`), applied in their
# turn among the shop's deliveries and whatever the shop's status (a shop is erased 48 hours after it uninstalled
# the app, when nothing else is done for it).
LIFECYCLE_TOPICS = ("app/uninstalled", "shop/redact", "customers/redact", "customers/data_request")


class InboxEntry(SQLModel, table=True):
    """One accepted Shopify delivery, kept raw. Unique per (shop, event id): a redelivery is a no-op."""

    __tablename__ = "inbox"
    __table_args__ = (
        sa.UniqueConstraint("shop_domain", "event_id", name="uq_inbox_event"),
        sa.Index("ix_inbox_pending", "shop_domain", "status", "id"),
        # Privacy requests of shops not held here are looked for without reading the whole inbox.
        sa.Index("ix_inbox_lifecycle", "status", sqlite_where=sa.text("status = 'lifecycle'"),
                 postgresql_where=sa.text("status = 'lifecycle'")),
    )

    id: int | None = Field(default=None, primary_key=True)
    shop_domain: str = Field(max_length=255)
    event_id: str = Field(max_length=100)
    topic: str = Field(max_length=100)
    webhook_id: str | None = Field(default=None, max_length=100)
    triggered_at: datetime | None = _ts()
    api_version: str | None = Field(default=None, max_length=20)
    source: str = Field(default="webhook", max_length=20)  # webhook | poll | backfill
    body: str = Field(sa_type=sa.Text)
    status: str = Field(default="pending", max_length=20)  # pending | lifecycle | applied | ignored | failed
    error: str | None = Field(default=None, sa_type=sa.Text)
    received_at: datetime | None = _ts()
    processed_at: datetime | None = _ts()


class Customer(SQLModel, table=True):
    __tablename__ = "customers"
    __table_args__ = (sa.Index("ix_customers_phone", "shop_id", "phone"),
                      sa.Index("ix_customers_shop_email", "shop_id", "email"))

    shop_id: int = Field(primary_key=True)
    customer_id: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    contact_key: str = Field(max_length=300)
    email: str | None = Field(default=None, max_length=320, index=True)
    phone: str | None = Field(default=None, max_length=40)
    first_name: str | None = None
    last_name: str | None = None
    locale: str | None = Field(default=None, max_length=20)
    country_code: str | None = Field(default=None, max_length=2)
    city: str | None = None
    state: str | None = Field(default=None, max_length=20)
    tags: str | None = None
    note: str | None = Field(default=None, sa_type=sa.Text)
    birthday: str | None = Field(default=None, max_length=10)  # YYYY-MM-DD or --MM-DD (year unknown)
    email_consent: str | None = Field(default=None, max_length=30)
    email_consent_at: datetime | None = _ts()
    sms_consent: str | None = Field(default=None, max_length=30)
    sms_consent_at: datetime | None = _ts()
    deleted: bool = False
    created_at_src: datetime | None = _ts()
    updated_at_src: datetime | None = _ts()


class Order(SQLModel, table=True):
    __tablename__ = "orders"
    __table_args__ = (
        sa.Index("ix_orders_contact", "shop_id", "contact_key"),
        # Only orders that carry the value (migration 0020): a backfill's orders carry none of the three.
        *(sa.Index(name, "shop_id", column, sqlite_where=sa.text(f"{column} IS NOT NULL"),
                   postgresql_where=sa.text(f"{column} IS NOT NULL"))
          for name, column in (("ix_orders_checkout", "checkout_id"), ("ix_orders_checkout_token", "checkout_token"),
                               ("ix_orders_cart_token", "cart_token"))),
    )

    shop_id: int = Field(primary_key=True)
    order_id: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    contact_key: str | None = Field(default=None, max_length=300)
    customer_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    name: str | None = Field(default=None, max_length=50)
    order_number: int | None = Field(default=None, sa_type=sa.BigInteger)
    currency: str | None = Field(default=None, max_length=3)  # shop currency of the *_money amounts below
    presentment_currency: str | None = Field(default=None, max_length=3)
    subtotal: Decimal = _money()
    total: Decimal = _money()
    total_tax: Decimal = _money()
    total_discounts: Decimal = _money()
    total_shipping: Decimal = _money()
    financial_status: str | None = Field(default=None, max_length=30)
    fulfillment_status: str | None = Field(default=None, max_length=30)
    test: bool = False
    cart_token: str | None = Field(default=None, max_length=255)
    checkout_token: str | None = Field(default=None, max_length=255)
    checkout_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    discount_codes: list[str] | None = _json()
    order_status_url: str | None = None
    source_name: str | None = Field(default=None, max_length=100)
    tags: str | None = None
    subscription: bool = False  # any sign of a subscription (selling plan, subscription tag or source)
    rebill: bool = False  # a recurring charge of a subscription: counted apart from the buyer's own cadence
    created_at_src: datetime | None = _ts()
    cancelled_at: datetime | None = _ts()
    fulfilled_at: datetime | None = _ts()
    updated_at_src: datetime | None = _ts()
    # Where a guest lives and speaks: their contact's COUNTRY, CITY and LANGUAGE come from their orders.
    country_code: str | None = Field(default=None, max_length=2)
    city: str | None = None
    locale: str | None = Field(default=None, max_length=20)
    points_basis: Decimal | None = _money(nullable=True, default=None)  # subtotal after discounts, no tax/shipping


class OrderLine(SQLModel, table=True):
    __tablename__ = "order_lines"

    shop_id: int = Field(primary_key=True)
    order_id: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    line_id: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    product_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    variant_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    title: str | None = None
    variant_title: str | None = None
    sku: str | None = None
    vendor: str | None = None
    quantity: int = 0
    price: Decimal = _money()
    total_discount: Decimal = _money()


class Refund(SQLModel, table=True):
    __tablename__ = "refunds"
    __table_args__ = (sa.Index("ix_refunds_order", "shop_id", "order_id"),)

    shop_id: int = Field(primary_key=True)
    refund_id: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    order_id: int = Field(sa_type=sa.BigInteger)
    amount: Decimal = _money()
    lines: list[dict[str, Any]] | None = _json()
    created_at_src: datetime | None = _ts()


class Product(SQLModel, table=True):
    __tablename__ = "products"

    shop_id: int = Field(primary_key=True)
    product_id: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    title: str | None = None
    handle: str | None = None
    product_type: str | None = None
    vendor: str | None = None
    tags: str | None = None
    status: str | None = Field(default=None, max_length=20)
    image_url: str | None = None
    collections: list[str] | None = _json()  # collection titles, when a poll or backfill told us
    deleted: bool = False
    updated_at_src: datetime | None = _ts()
    brevo_hash: str | None = Field(default=None, max_length=64)  # the Brevo product body last delivered


class Checkout(SQLModel, table=True):
    __tablename__ = "checkouts"
    __table_args__ = (
        sa.Index("ix_checkouts_contact", "shop_id", "contact_key"),
        sa.Index("ix_checkouts_token", "shop_id", "token"),
        sa.Index("ix_checkouts_shop_cart_token", "shop_id", "cart_token"),
    )

    shop_id: int = Field(primary_key=True)
    checkout_id: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    token: str | None = Field(default=None, max_length=255)
    cart_token: str | None = Field(default=None, max_length=255, index=True)
    contact_key: str | None = Field(default=None, max_length=300)
    customer_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    currency: str | None = Field(default=None, max_length=3)
    subtotal: Decimal = _money()
    total: Decimal = _money()
    recovery_url: str | None = None
    lines: list[dict[str, Any]] | None = _json()
    completed_at: datetime | None = _ts()
    created_at_src: datetime | None = _ts()
    updated_at_src: datetime | None = _ts()


class Cart(SQLModel, table=True):
    __tablename__ = "carts"

    shop_id: int = Field(primary_key=True)
    token: str = Field(primary_key=True, max_length=255)
    total: Decimal = _money()
    lines: list[dict[str, Any]] | None = _json()
    created_at_src: datetime | None = _ts()
    updated_at_src: datetime | None = _ts()


class Contact(SQLModel, table=True):
    """One buyer of one shop, and what Brevo last received for them."""

    __tablename__ = "contacts"
    __table_args__ = (
        sa.Index("ix_contacts_dirty", "shop_id", "dirty"),
        sa.Index("ix_contacts_import", "shop_id", "import_process"),
        sa.Index("ix_contacts_push", "shop_id", "push_state", "contact_key"),
        sa.Index("ix_contacts_lifecycle", "shop_id", "lifecycle_due_at"),
        sa.Index("ix_contacts_phone", "shop_id", "phone"),
    )

    shop_id: int = Field(primary_key=True)
    contact_key: str = Field(primary_key=True, max_length=300)
    customer_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)
    first_name: str | None = None  # for guests, from their orders' billing address
    last_name: str | None = None
    dirty: bool = True
    # Only history (a backfill, a poll, a delivery older than the freshness window) made it dirty: the rebuild's
    # segment moves and ledger corrections are catching up with the past, not news.
    history: bool = False
    push_state: str = Field(default="idle", max_length=20)  # idle | pending | dead
    pending: dict[str, Any] | None = _json()  # the Brevo contact body waiting to be sent
    pending_hash: str | None = Field(default=None, max_length=64)
    sent: dict[str, Any] | None = _json()  # the Brevo contact body last delivered
    sent_hash: str | None = Field(default=None, max_length=64)
    brevo_email: str | None = Field(default=None, max_length=320)  # the identifier Brevo knows them by
    attempts: int = 0
    next_attempt_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    pushed_at: datetime | None = _ts()
    # Imports are applied by Brevo asynchronously: events for this buyer wait until then (DESIGN 3.4).
    visible_at: datetime | None = _ts()
    # The Brevo import that carried the last body, until its process is checked; a contact an import skipped
    # goes out again one by one, so that Brevo's reason for refusing it is heard.
    import_process: int | None = None
    one_by_one: bool = False
    merged_into: str | None = Field(default=None, max_length=300)
    # Figures kept for shop-wide computations (RFM quintiles, median cadence) without reloading orders.
    order_count: int = 0
    total_spent: Decimal = _money()
    last_order_at: datetime | None = _ts()
    days_between_orders: Decimal | None = _money(nullable=True, default=None)
    rfm_score: str | None = Field(default=None, max_length=3)
    rfm_segment: str | None = Field(default=None, max_length=30)
    # Time-based triggers (win-back, replenishment, review request, abandoned cart, birthday): the next
    # moment one falls due, and up to when they have been emitted. Moments before `created_at` are history.
    lifecycle_due_at: datetime | None = _ts()
    lifecycle_scanned_at: datetime | None = _ts()
    created_at: datetime | None = _ts()
    # The tier last announced (loyalty_tier_changed compares with it) and the rules it was computed under.
    loyalty_tier: str | None = Field(default=None, max_length=50)
    loyalty_rules_at: datetime | None = _ts()


class ConsentChange(SQLModel, table=True):
    __tablename__ = "consent_history"

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(index=True)
    contact_key: str = Field(max_length=300)
    channel: str = Field(max_length=10)  # email | sms
    state: str = Field(max_length=30)
    opt_in_level: str | None = Field(default=None, max_length=30)
    source: str = Field(max_length=30)
    occurred_at: datetime | None = _ts()
    recorded_at: datetime | None = _ts()


class OutboxEntry(SQLModel, table=True):
    """A Brevo event waiting to be sent once; the idempotency key is built from Shopify ids."""

    __tablename__ = "outbox"
    __table_args__ = (
        sa.UniqueConstraint("shop_id", "idempotency_key", name="uq_outbox_key"),
        sa.Index("ix_outbox_due", "shop_id", "status", "next_attempt_at"),
        # The rows to send alone (migration 0021): a query reaches them by `OUTBOX_PENDING`.
        sa.Index("ix_outbox_pending", "shop_id", "target", "id", sqlite_where=sa.text("status = 'pending'"),
                 postgresql_where=sa.text("status = 'pending'")),
    )

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int
    idempotency_key: str = Field(max_length=300)
    event_name: str = Field(max_length=100)
    target: str = Field(default="event", max_length=20)  # event: /events | order: /orders/status
    contact_key: str | None = Field(default=None, max_length=300)
    body: dict[str, Any] = Field(sa_type=sa.JSON)
    status: str = Field(default="pending", max_length=20)  # pending | delivered | dead
    attempts: int = 0
    next_attempt_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime | None = _ts()
    delivered_at: datetime | None = _ts()


# The outbox's rows still to send, as a query must say it to reach the index that holds them alone: with the value
# in the statement's text (PostgreSQL's generic plan of a prepared statement cannot know that a bound value is
# 'pending', and would read the shop's whole outbox instead).
OUTBOX_PENDING = OutboxEntry.__table__.c.status == sa.literal_column("'pending'")  # type: ignore[attr-defined]


class LoyaltyEntry(SQLModel, table=True):
    """One line of a buyer's points ledger. Append-only: a change is a new entry (`KEY#N`), never an update."""

    __tablename__ = "loyalty_entries"
    __table_args__ = (
        sa.UniqueConstraint("shop_id", "contact_key", "entry_key", name="uq_loyalty_entry"),
    )

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int
    contact_key: str = Field(max_length=300)
    entry_key: str = Field(max_length=200)  # source key: order:ID:earn, refund:ID, signup, birthday:YEAR, ...
    kind: str = Field(max_length=20)  # earn | bonus | adjustment | reversal | expiry | redemption
    points: int
    reason: str | None = Field(default=None, sa_type=sa.Text)
    occurred_at: datetime | None = _ts()
    recorded_at: datetime | None = _ts()


class LoyaltyReward(SQLModel, table=True):
    """A reward code asked for (automatically or by the buyer) and, once Shopify created it, issued.

    The code is chosen when the request is made, so a retry after a crash asks Shopify for the same code and
    finds it instead of creating a second one; the points are deducted only when Shopify confirmed it.
    """

    __tablename__ = "loyalty_rewards"
    __table_args__ = (
        sa.UniqueConstraint("shop_id", "request_key", name="uq_loyalty_reward_request"),
        sa.UniqueConstraint("shop_id", "code", name="uq_loyalty_reward_code"),
        sa.Index("ix_loyalty_rewards_due", "shop_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int
    contact_key: str = Field(max_length=300)
    request_key: str = Field(max_length=200)  # auto:<contact>:<n> | proxy:<contact>:<n> | cli:<contact>:<n>
    source: str = Field(max_length=20)  # automatic | app_proxy | cli
    points: int
    value: Decimal = _money()
    code: str = Field(max_length=100)
    status: str = Field(default="requested", max_length=20)  # requested | issued | failed
    discount_id: str | None = Field(default=None, max_length=200)
    error: str | None = Field(default=None, sa_type=sa.Text)
    attempts: int = 0
    next_attempt_at: datetime | None = _ts()
    requested_at: datetime | None = _ts()
    issued_at: datetime | None = _ts()


class DeadLetter(SQLModel, table=True):
    """Something we could not apply or deliver, kept with the reason so that nothing is lost silently."""

    __tablename__ = "dead_letters"

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int | None = Field(default=None, index=True)
    shop_domain: str | None = Field(default=None, max_length=255)
    source: str = Field(max_length=20)  # inbox | event | contact
    reference: str = Field(max_length=300)
    topic: str | None = Field(default=None, max_length=100)
    reason: str = Field(sa_type=sa.Text)
    payload: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime | None = _ts()
    resolved_at: datetime | None = _ts()


class Backfill(SQLModel, table=True):
    """One resource's history read from Shopify with a bulk query, and how far it got (a killed backfill
    resumes from here: the operation is not run again while its file is there, staged lines are not read
    again; a worker applies the staged objects from the last one applied)."""

    __tablename__ = "backfills"
    __table_args__ = (sa.UniqueConstraint("shop_id", "resource", name="uq_backfill_resource"),)

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int
    resource: str = Field(max_length=20)  # customers | orders | products | checkouts
    status: str = Field(default="started", max_length=20)  # started | staging | staged | done | failed
    since: datetime | None = _ts()
    operation_id: str | None = Field(default=None, max_length=200)
    url: str | None = Field(default=None, sa_type=sa.Text)
    lines: int = 0  # in Shopify's file: objects and their nested rows
    staged: int = 0  # lines of it stored
    queued: int = 0  # objects applied by the workers
    last_queued_line: int = 0  # the line of the last object applied
    error: str | None = Field(default=None, sa_type=sa.Text)
    notice: str | None = Field(default=None, sa_type=sa.Text)  # what the merchant should know (orders: 60 days)
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    # When the backfill last said it was running (every few seconds); cleared when it stops. While recent,
    # workers apply only the files staged before the first one still being read, and leave the buyers history
    # made dirty alone: they are built once, with all of their history.
    queued_at: datetime | None = _ts()


class BackfillRow(SQLModel, table=True):
    """A staged row of a bulk operation's file, kept until its object is reassembled with its nested rows: an
    object's line with the nested lines staged with it (one per text line), or one nested line staged apart."""

    __tablename__ = "backfill_rows"
    # Parents in line order (parent IS NULL, line > the last queued) and a chunk's children both walk this index.
    __table_args__ = (sa.Index("ix_backfill_rows_parent_line", "backfill_id", "parent", "line"),)

    backfill_id: int = Field(primary_key=True)
    line: int = Field(primary_key=True)
    parent: str | None = Field(default=None, max_length=200)  # the parent object's GID, for nested rows
    body: str = Field(sa_type=sa.Text)


class PollState(SQLModel, table=True):
    """A shop's reconciliation poll of one resource: what it has read up to and when it runs next.

    A pass reads the objects updated in [bookmark, pass_until] page by page; each page's objects are queued with
    the page's cursor in the same commit, so a pass cut short resumes at its next page. Only a finished pass
    moves the bookmark, to the pass's end, which is capped below the time the pass started: the bookmark never
    moves past an object not yet stored."""

    __tablename__ = "poll_states"
    __table_args__ = (sa.UniqueConstraint("shop_id", "resource", name="uq_poll_resource"),
                      sa.Index("ix_poll_states_due", "due_at"))

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int
    resource: str = Field(max_length=20)  # customers | orders | products | checkouts
    bookmark: datetime = _ts(nullable=False)
    pass_until: datetime | None = _ts()  # the end of the pass under way
    cursor: str | None = Field(default=None, sa_type=sa.Text)  # where the pass under way goes on
    due_at: datetime = _ts(nullable=False)
    last_polled_at: datetime | None = _ts()
    last_found: int = 0  # objects the last finished pass queued
    found: int = 0  # objects polls have queued, in all
    error: str | None = Field(default=None, sa_type=sa.Text)


class DataExport(SQLModel, table=True):
    """What the connector held on one customer when Shopify asked for it (customers/data_request), kept for
    the merchant to hand over; erased with the customer (customers/redact) or the shop (shop/redact)."""

    __tablename__ = "data_exports"
    __table_args__ = (sa.UniqueConstraint("shop_id", "request_key", name="uq_data_export_request"),)

    id: int | None = Field(default=None, primary_key=True)
    shop_id: int = Field(index=True)
    request_key: str = Field(max_length=100)  # Shopify's data_request id, else the delivery's event id
    customer_id: int | None = Field(default=None, sa_type=sa.BigInteger)
    body: str = Field(sa_type=sa.Text)  # the export, JSON
    created_at: datetime | None = _ts()


class OAuthState(SQLModel, table=True):
    """A one-time `state` of the authorization-code install: issued by /auth/install for one shop, taken (deleted)
    by its /auth/callback; older than ten minutes it is refused."""

    __tablename__ = "oauth_states"

    state: str = Field(primary_key=True, max_length=64)
    shop_domain: str = Field(max_length=255)
    created_at: datetime | None = _ts()


# Per model: the fields with a plain default, and those whose default comes from a factory.
_ROW_DEFAULTS: dict[type[SQLModel], tuple[dict[str, Any], list[tuple[str, Any]]]] = {}


def new_row(model: type[M], **values: Any) -> M:
    """A new row of a table model, as `model(**values)` builds it (every field set, defaults filled in) at a
    twentieth of the cost: SQLModel's constructor sends each field through its own setter and SQLAlchemy's, which
    records each as a change; here the values go straight into the row. Added to a session, it is inserted with
    all of them all the same. For the hot paths that create mirror rows by the thousand (a backfill's history)."""
    defaults = _ROW_DEFAULTS.get(model)
    if defaults is None:
        plain = {name: field.default for name, field in model.model_fields.items()
                 if field.default is not PydanticUndefined}
        factories = [(name, field.default_factory) for name, field in model.model_fields.items()
                     if field.default is PydanticUndefined and field.default_factory is not None]
        defaults = _ROW_DEFAULTS[model] = (plain, factories)
    plain, factories = defaults
    row = manager_of_class(model).new_instance()
    state = row.__dict__
    state.update(plain)
    for name, factory in factories:
        if name not in values:
            state[name] = factory()  # type: ignore[call-arg]
    state.update(values)
    object.__setattr__(row, "__pydantic_fields_set__", set(values))
    object.__setattr__(row, "__pydantic_extra__", None)
    return row


def update_row(row: SQLModel, values: Mapping[str, Any]) -> None:
    """Set the values that differ from the row's, through SQLAlchemy's own setter (SQLModel's sends each value
    through pydantic's too): for the hot paths that update mirror rows by the thousand, mostly with what they
    already hold (each order of a backfill touches its buyer's contact again)."""
    state = row.__dict__
    for name, value in values.items():
        if name not in state or state[name] != value:
            set_attribute(row, name, value)
