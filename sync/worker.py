"""The worker loop: lease due shops, apply their inbox, rebuild dirty profiles, push to Brevo, release."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NoReturn, TypeVar

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from connector import jsontext
from connector.brevo import (
    BrevoAuthFailed,
    BrevoClient,
    BrevoError,
    BrevoRejected,
    BrevoRetriable,
    Pacer,
    paced,
)
from connector.clock import Clock, SystemClock, as_utc
from connector.database import (
    chunked,
    commit_without_waiting,
    forget_erased,
    insert_new,
    make_engine,
    one_of,
    refresh_statistics,
    unit_of_work,
)
from connector.models import (
    Backfill,
    Checkout,
    ConsentChange,
    Contact,
    Customer,
    DeadLetter,
    InboxEntry,
    LoyaltyEntry,
    Order,
    OrderLine,
    OutboxEntry,
    Product,
    Refund,
    Shop,
    UTCDateTime,
)
from connector.runtime import collected_after
from connector.settings import Settings
from connector.shopify import CostBudget, ShopifyAuthFailed, ShopifyClient, ShopifyError
from connector.shops import credentials, shopify_client
from mappings.ecommerce import HISTORY_ORDER
from mappings.identity import normalise_phone
from mappings.profile import BREVO_ATTRIBUTES
from mappings.shop_config import ShopConfig
from mappings.shopify import PayloadError
from sync import backfill
from sync.apply import TOPICS, ApplyContext, Prepared, Topic, wanted_by, write_events
from sync.compliance import (
    CustomerRequest,
    redact_customer,
    redact_shop,
    settle_unknown_shops,
    store_export,
    uninstall,
)
from sync.consent import due_consent_updates, postpone_consent, write_consent
from sync.helper import Helper
from sync.mirror import BatchMirror
from sync.profiles import Lookahead, ShopContext, build_dirty_contacts, settle_history_figures
from sync.push import Pusher, PushPolicy, ShopPaused, pause_shop
from sync.queue import Lease, LeaseLost, fence, lease_due_shops, release
from sync.reconcile import due_polls, ensure_polls, poll_failed, poll_turn
from sync.rewards import due_rewards, issue_rewards
from sync.segments import mark_due_lifecycle, recompute_shop

log = logging.getLogger("connector.worker")
T = TypeVar("T")

INBOX_BATCH = 200
HISTORY_BATCH = 1000  # a batch that starts with history
BUILD_BATCH = 500  # buyers built per unit of work
# While a large number of buyers is built, the full imports of those built so far go to Brevo each time this many
# more are built (`ImportsWhileBuilding`): an import or two (at 100,000 customers, about 6,000 contacts fill 8 MB).
IMPORT_EVERY = 10_000
SHOP_TIME_SLICE = 5.0  # seconds of inbox work per lease before pushing and letting others in
UNKNOWN_SHOPS_EVERY = 300.0  # seconds between two looks for privacy deliveries of shops not held here
POLL_RETRY = timedelta(minutes=1)  # a failed poll (Shopify down, throttled) is tried again this soon
BACKFILL_HOLD = 1.0  # seconds a shop rests when all it waits for is a running backfill
# PostgreSQL's statistics of the tables the applier fills are refreshed after this worker has applied this many
# deliveries, then each time that count has doubled (see `refresh_statistics`): a database's first backfill is
# planned from what its tables hold, not from empty tables (measured at 100,000 customers: a buyer batch's
# orders read in 2 ms instead of 302 ms). Tables that were already large grow little by one more shop's history;
# autovacuum keeps theirs.
STATISTICS_FIRST = 20_000
MIRROR_TABLES = tuple(model.__table__ for model in (  # type: ignore[union-attr]
    InboxEntry, Customer, Product, Order, OrderLine, Refund, Checkout, Contact, LoyaltyEntry, ConsentChange,
    OutboxEntry))
# The same for the tables the builder fills, by buyers built: a backfill's buyers are built after its history is
# applied, and their loyalty ledgers grow from nothing then. Planned from the empty ledger, each batch's ledgers
# were read by scanning the whole shop's (measured at 100,000 customers, 848,000 entries: 281 ms a batch of 500
# buyers instead of 6 ms).
BUILT_STATISTICS_FIRST = 2_000
BUILT_TABLES = tuple(model.__table__ for model in (Contact, LoyaltyEntry, OutboxEntry))  # type: ignore[union-attr]
HISTORY_SOURCES = ("backfill", "poll")  # inbox sources read from Shopify's past, not announced by a webhook


@dataclass(slots=True)
class Delivery:
    """A pending inbox row as the applier reads it, or an object of a staged backfill (no id, its payload
    already read), and the outcome it records for it."""

    id: int | None
    event_id: str
    topic: str
    source: str
    body: str
    triggered_at: datetime | None
    received_at: datetime | None
    status: str = "pending"
    error: str | None = None
    payload: dict[str, Any] | None = None
    record: Any = None  # a staged object its topic's parser already read (`backfill.HistoryReader`)


@dataclass
class WorkerStats:
    applied: int = 0
    failed: int = 0
    ignored: int = 0
    contacts_pushed: int = 0
    events_pushed: int = 0
    built: int = 0  # dirty contacts looked at by the builder


class ImportsWhileBuilding:
    """On PostgreSQL, while many buyers are built in one go (a backfill's hundred thousand), each import that fills
    up with those built so far goes to Brevo between two batches (`Pusher.push_contacts` with `full_only`), and
    Brevo takes it while the next buyers are built, instead of every import waiting for the last buyer: called
    each time `IMPORT_EVERY` more buyers are built (`Worker._build_profiles`); what is left goes once the building
    is done, as before. Nothing goes unless `ready` says imports may go (asked when they are first due), nor once
    Brevo has asked to wait (until the next turn). (Leaving the last import of each call on its way while the
    building goes on would save the worker's wait for Brevo's answer, about 5 s of building 100,000 customers on
    PostgreSQL, but in a run on SQLite the connector's peak memory grew from 276 to 352 MB.)"""

    def __init__(self, pusher: Pusher, *, ready: Callable[[], bool], stats: WorkerStats) -> None:
        self.pusher, self._ready, self._stats = pusher, ready, stats
        self._due = IMPORT_EVERY
        self._going: bool | None = None  # unknown until the first imports are due

    def __call__(self, built: int) -> None:
        if built < self._due or self._going is False:
            return
        self._due = built + IMPORT_EVERY
        if self._going is None:
            self._going = self._ready()
            if not self._going:
                return
        self._stats.contacts_pushed += self.pusher.push_contacts(full_only=True)
        if self.pusher.held_back:
            self._going = False


def _log_failed_refresh(refresh: Future[None]) -> None:
    """`refresh_statistics` logs the database's refusals; anything else a refresh beside the work raised."""
    failure = None if refresh.cancelled() else refresh.exception()
    if failure is not None:
        log.warning("could not refresh the planner's statistics: %s: %s", type(failure).__name__, failure)


class Worker:
    def __init__(self, engine: Engine, settings: Settings, *, clock: Clock | None = None,
                 owner: str | None = None, http: httpx.Client | None = None,
                 policy: PushPolicy | None = None) -> None:
        self.engine, self.settings = engine, settings
        self.clock = clock or SystemClock()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self.http = http or httpx.Client(timeout=20.0)
        self.policy = policy or PushPolicy(lease_seconds=settings.lease_seconds)
        self.pacers: dict[int, Pacer] = {}  # per shop: Brevo's budgets outlive one lease
        self.shopify_budgets: dict[int, CostBudget] = {}  # per shop: Shopify's query-cost bucket
        self.polls_ready: set[int] = set()  # shops whose poll rows this worker has seen to
        self.held: set[int] = set()  # shops waiting for a running backfill's next objects, released with a rest
        self.unknown_due = 0.0  # monotonic: when to settle deliveries for shops not held here
        self.stats = WorkerStats()
        self.statistics_due = STATISTICS_FIRST  # deliveries applied by this worker when they are next refreshed
        self.built_statistics_due = BUILT_STATISTICS_FIRST  # contacts built when the builder's tables are next
        self.refreshed: set[tuple[str, ...]] = set()  # the groups of tables whose statistics this worker refreshed
        self.refreshing: dict[tuple[str, ...], Future[None]] = {}  # per group, the refresh running beside the work
        self.statistics_thread: ThreadPoolExecutor | None = None
        self.wake = threading.Event()
        url = engine.url.render_as_string(hide_password=False)  # the helpers read the database themselves
        self.reader = backfill.HistoryReader(url) if settings.read_ahead else None
        # Builds part of each large batch of buyers (a backfill's, a poll's) on the other core.
        self.builder = Helper(url, "building buyers") if settings.read_ahead else None
        # Reads the next page of history's orders while the one before goes to Brevo (`Pusher.push_events`);
        # read-only, so that on SQLite it does not take the write lock the worker's own writes need meanwhile.
        self.reading = make_engine(url, read_only=True) if settings.read_ahead else None

    # --- loop -----------------------------------------------------------------------------------

    def run(self, *, until_idle: bool = False, stop: threading.Event | None = None, idle_sleep: float = 0.2,
            on_cycle: Callable[[WorkerStats], None] | None = None) -> WorkerStats:
        try:
            while stop is None or not stop.is_set():
                worked = self.run_once()
                if on_cycle is not None:
                    on_cycle(self.stats)
                if worked:
                    continue
                if until_idle and not self._has_pending_work():
                    break
                self.wake.wait(idle_sleep)
                self.wake.clear()
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        """End the helper processes, if they run (the next backfill, the next large batch of buyers, starts
        another)."""
        if self.reader is not None:
            self.reader.close()
        if self.builder is not None:
            self.builder.close()
        if self.reading is not None:
            self.reading.dispose()
        if self.statistics_thread is not None:
            self.statistics_thread.shutdown(wait=True, cancel_futures=True)  # one under way ends first
            self.statistics_thread = None
            self.refreshing.clear()

    def _forget_erased(self) -> None:
        """After an erasure: the erased rows' pages gone from the disk, and the numbers this process remembers
        having normalised gone from its memory."""
        forget_erased(self.engine)
        normalise_phone.cache_clear()

    def _has_pending_work(self) -> bool:
        """Anything not yet delivered, whether due now or later (until-idle waits for retries too)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.text("""
                SELECT
                  (SELECT count(*) FROM inbox i JOIN shops s ON s.domain = i.shop_domain
                     WHERE i.status = 'pending' AND s.status = 'active' OR i.status = 'lifecycle')
                + (SELECT count(*) FROM contacts c JOIN shops s ON s.id = c.shop_id
                     WHERE (c.dirty OR c.push_state = 'pending' OR c.import_process IS NOT NULL)
                       AND s.status = 'active')
                + (SELECT count(*) FROM outbox o JOIN shops s ON s.id = o.shop_id
                     WHERE o.status = 'pending' AND (s.status = 'active' OR o.target = 'erase'
                       AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= :now)))
                + (SELECT count(*) FROM backfills b JOIN shops s ON s.id = b.shop_id
                     WHERE b.status = 'staged' AND s.status = 'active')
                + (SELECT count(*) FROM shops s WHERE s.status = 'active' AND s.brevo_ready_at IS NULL)
                + (SELECT count(*) FROM shops s WHERE s.status = 'active'
                     AND (s.rfm_due_at IS NULL OR s.rfm_due_at <= :now))
                + (SELECT count(*) FROM contacts c JOIN shops s ON s.id = c.shop_id
                     WHERE c.lifecycle_due_at <= :now AND s.status = 'active')
                + (SELECT count(*) FROM loyalty_rewards r JOIN shops s ON s.id = r.shop_id
                     WHERE r.status = 'requested' AND s.status = 'active')
            """).bindparams(sa.bindparam("now", type_=UTCDateTime)), {"now": self.clock.now()}).scalar_one()
        return bool(row)

    def run_once(self) -> int:
        """One pass over the shops that are due now; returns how many shops were worked."""
        if time.monotonic() >= self.unknown_due:  # housekeeping, every few minutes
            self.unknown_due = time.monotonic() + UNKNOWN_SHOPS_EVERY
            with unit_of_work(self.engine) as session:
                settled = settle_unknown_shops(session, self.clock.now())
            if settled:
                self._forget_erased()
                log.info("%d privacy or lifecycle deliveries for shops not held here settled", settled)
        leases = lease_due_shops(self.engine, owner=self.owner, now=self.clock.now(),
                                 seconds=self.settings.lease_seconds, polls=self.settings.reconcile_minutes > 0)
        for lease in leases:
            try:
                self.work_shop(lease)
            except LeaseLost as exc:
                log.warning("%s", exc)
            except ShopPaused as exc:
                log.error("shop %s paused: %s", lease.domain, exc)
            except Exception:
                # A bug must not stop the other shops: this one is left leased, so it is tried again when the
                # lease lapses (a pause of CONNECTOR_LEASE_SECONDS, not a busy loop), with the error in the log.
                log.exception("shop %s: unexpected error; tried again when its lease lapses", lease.domain)
                self.held.discard(lease.shop_id)
                continue
            # A shop whose buyers wait for a running backfill would be due again at once (they are dirty) and
            # leased in a loop that only takes time from the backfill: it rests a moment instead.
            rest = BACKFILL_HOLD if lease.shop_id in self.held else 0.0
            self.held.discard(lease.shop_id)
            release(self.engine, lease, rest=rest, now=self.clock.now())
        return len(leases)

    # --- one shop -------------------------------------------------------------------------------

    def work_shop(self, lease: Lease) -> None:
        shop, _ = self._lifecycle(lease)
        if shop is None:
            return  # erased (shop/redact)
        creds = credentials(shop, self.settings)
        client = None
        if creds.brevo_api_key:
            pacer = self.pacers.setdefault(lease.shop_id, Pacer())
            pacer.load(shop.brevo_pacing)
            client = BrevoClient(creds.brevo_api_key, base_url=self.settings.brevo_api_url, http=self.http,
                                 pacer=pacer)
        try:
            if shop.status == "active":
                self._work_shop(lease, shop, client)
            elif client is not None:  # uninstalled or paused: only customers' erasures still reach Brevo
                Pusher(self.engine, client, lease, self.clock, self.policy).push_erasures(pause=False)
        finally:
            if client is not None:
                self._save_pacing(lease, client.pacer)

    def _lifecycle(self, lease: Lease) -> tuple[Shop | None, int]:
        """Apply the shop's pending lifecycle and privacy deliveries, each in its own unit of work, in their turn:
        for an active shop only those before its other pending deliveries (a data request sees what came before
        it), for a shop no longer active all of them. Returns the shop as they left it (None once erased) and
        how many were applied."""
        handled = 0
        while True:
            erased = gone = False
            with unit_of_work(self.engine) as session:
                shop = session.get(Shop, lease.shop_id)
                if shop is None:
                    return None, handled
                where = [col(InboxEntry.shop_domain) == lease.domain, col(InboxEntry.status) == "lifecycle"]
                if shop.status == "active":
                    where.append(col(InboxEntry.id) < sa.func.coalesce(sa.select(sa.func.min(InboxEntry.id)).where(
                        col(InboxEntry.shop_domain) == lease.domain, col(InboxEntry.status) == "pending")
                        .scalar_subquery(), 2 ** 62))
                entry = session.execute(sa.select(InboxEntry).where(*where).order_by(col(InboxEntry.id)).limit(1)
                                        ).scalar_one_or_none()
                if entry is None:
                    return shop, handled
                handled += 1
                now = self.clock.now()
                fence(session, lease, now=now, seconds=self.settings.lease_seconds)
                try:
                    payload = json.loads(entry.body)
                    if not isinstance(payload, dict):
                        raise PayloadError("the body is not a JSON object")
                    if entry.topic == "shop/redact":  # its own delivery goes with the rest
                        rows = sum(redact_shop(session, shop).values())
                        log.warning("shop %s erased at Shopify's request (%d rows)", lease.domain, rows)
                        erased = gone = True
                    elif entry.topic == "app/uninstalled":
                        uninstall(session, shop, now)
                        log.warning("shop %s uninstalled the app: its work stops", lease.domain)
                    else:
                        request = CustomerRequest.from_payload(payload)
                        if entry.topic == "customers/redact":
                            redact_customer(session, shop, request, now=now, keep_inbox=entry.id,
                                            brevo_mode=ShopConfig.from_dict(shop.config).redact_in_brevo)
                            erased = True
                        else:
                            store_export(session, shop, request, entry.event_id, now=now)
                        entry.body = request.scrubbed()
                    if not gone:
                        entry.processed_at, entry.status = now, "applied"
                except (ValueError, PayloadError) as exc:
                    entry.processed_at = now
                    self._quarantine(session, entry, lease, f"unreadable {entry.topic} payload: {exc}",
                                     WorkerStats())
                except LeaseLost:
                    raise
                except Exception as exc:  # a bug: nothing of it is kept (rolled back); the delivery is set aside
                    failed = (entry.id, f"internal error applying {entry.topic}: {type(exc).__name__}: {exc}")
                    log.exception("applying inbox %s failed", entry.id)
                    session.rollback()
                    with unit_of_work(self.engine) as retry:
                        row = retry.get(InboxEntry, failed[0])
                        if row is not None:
                            row.processed_at = now
                            self._quarantine(retry, row, lease, failed[1], WorkerStats())
                    continue
            if erased:
                self._forget_erased()
            if gone:
                return None, handled

    def _save_pacing(self, lease: Lease, pacer: Pacer) -> None:
        with unit_of_work(self.engine) as session:
            session.execute(sa.update(Shop).where(col(Shop.id) == lease.shop_id, col(Shop.lease_token) == lease.token)
                            .values(brevo_pacing=pacer.dump()))

    def _work_shop(self, lease: Lease, shop: Shop, client: BrevoClient | None) -> None:
        if shop.brevo_ready_at is None:
            if client is None:
                self._setup_failed(lease, "no Brevo API key for this shop", retry_in=300)
            else:
                shop = self._prepare_brevo(lease, shop, client) or shop
        if self.settings.reconcile_minutes > 0:
            self._reconcile(lease, shop)
        started = time.monotonic()
        while time.monotonic() - started < SHOP_TIME_SLICE:
            if self.apply_inbox(lease, shop):
                continue
            # Stopped at a lifecycle or privacy delivery (or the end): it is applied in its turn.
            after, handled = self._lifecycle(lease)
            if after is None or after.status != "active":
                return  # erased or uninstalled: nothing more is done for this shop
            if not handled and not self.apply_history(lease, shop):
                break  # deliveries first: the staged history of a backfill when none is waiting
        now = self.clock.now()
        with unit_of_work(self.engine) as session:
            mark_due_lifecycle(session, lease.shop_id, now)
            fence(session, lease, now=now, seconds=self.settings.lease_seconds)
        # While history (a backfill, a poll) is still queued, buyers only it changed wait: each is then built once,
        # with all of it, and goes to Brevo in full-size imports, instead of once per slice of their history.
        history_left = self._history_queued(lease)
        if not history_left and shop.rfm_thresholds is None and self._settle_history_figures(lease, shop, now):
            # A shop's first history (its backfill) is all applied and it has no RFM figures yet: they come first,
            # from the buyers' order figures, so that the builder builds each buyer once, with their score. (Once
            # a shop has figures, the daily recompute comes after the build: a segment moved by new thresholds
            # is then announced for buyers a poll touched too.)
            with unit_of_work(self.engine) as session:
                recompute_shop(session, shop, now)
                fence(session, lease, now=now, seconds=self.settings.lease_seconds)
        shop = self._build_profiles(lease, shop, now, live_only=history_left,  # re-read: figures just set count
                                    between=self._imports_while_building(lease, shop, client))
        if not history_left and (
                shop.rfm_due_at is None or as_utc(shop.rfm_due_at) <= now  # type: ignore[operator]
                or (shop.rfm_thresholds is None and self._has_buyers(lease.shop_id))):
            # Daily, and on a shop's first day as soon as it has buyers; contacts whose score moved
            # are rebuilt at once (their segment_changed events come from the builder).
            with unit_of_work(self.engine) as session:
                recompute_shop(session, shop, now)
                fence(session, lease, now=now, seconds=self.settings.lease_seconds)
            shop = self._build_profiles(lease, shop, now)
        if self._issue_rewards(lease, shop):
            # balances and codes go out now
            shop = self._build_profiles(lease, shop, self.clock.now(), live_only=history_left)
        self._write_consent(lease, shop)
        if client is None or shop.brevo_ready_at is None:
            return  # nothing can be delivered before the account is set up; the rows wait
        # Contacts carrying a category Brevo does not offer yet wait for the options (events wait for them).
        options_ready = self._sync_category_options(lease, shop, client)
        pusher = Pusher(self.engine, client, lease, self.clock, self.policy, list_id=shop.brevo_list_id,
                        reading=self.reading)
        pusher.push_erasures()
        pusher.push_catalog(shop.domain)
        if options_ready:
            self.stats.contacts_pushed += pusher.push_contacts()
        now = self.clock.now()
        self.stats.events_pushed += pusher.push_events(now=now)
        pusher.push_events(target="order", now=now)
        if not history_left:  # history's orders wait for their buyers, who wait for the rest of the history
            pusher.push_events(target=HISTORY_ORDER, now=now)
        # Last: the batches above have first call on the shared budget; what an import skipped goes out again,
        # one by one, next turn.
        pusher.check_imports(now=now)

    def _reconcile(self, lease: Lease, shop: Shop) -> None:
        """Run the shop's due reconciliation polls (what they find is applied in this same turn)."""
        now = self.clock.now()
        if lease.shop_id not in self.polls_ready:
            ensure_polls(self.engine, lease.shop_id, now)
            self.polls_ready.add(lease.shop_id)
        states = due_polls(self.engine, lease.shop_id, now)
        if not states:
            return
        every = timedelta(minutes=self.settings.reconcile_minutes)
        client = self._shopify(lease, shop)
        for state in states:
            failed = "no Shopify access token for this shop" if client is None else None
            if client is not None:
                try:
                    poll_turn(self.engine, client, lease, state, now=now, every=every,
                              lease_seconds=self.settings.lease_seconds)
                except ShopifyAuthFailed as exc:
                    pause_shop(self.engine, lease.shop_id, exc)
                except ShopifyError as exc:
                    failed = f"Shopify: {exc}"
            if failed:
                log.warning("shop %s: %s poll failed: %s", lease.domain, state.resource, failed)
                poll_failed(self.engine, lease, state, failed, now=now, retry_in=min(every, POLL_RETRY),
                            lease_seconds=self.settings.lease_seconds)

    def _shopify(self, lease: Lease, shop: Shop) -> ShopifyClient | None:
        """The shop's Admin API client, its cost bucket kept across leases (None without a token)."""
        return shopify_client(shop, self.settings, engine=self.engine, http=self.http,
                              budget=self.shopify_budgets.setdefault(lease.shop_id, CostBudget()))

    def _issue_rewards(self, lease: Lease, shop: Shop) -> int:
        """Requested reward codes are created in Shopify (outside any transaction), then deducted."""
        if not due_rewards(self.engine, lease.shop_id, self.clock):
            return 0
        client = self._shopify(lease, shop)
        if client is None:
            log.warning("shop %s: reward codes wait, no Shopify access token", lease.domain)
            return 0
        return issue_rewards(self.engine, lease, client, self.clock, lease_seconds=self.settings.lease_seconds)

    def _write_consent(self, lease: Lease, shop: Shop) -> int:
        """Opt-outs heard from Brevo are written to the customers' consent in Shopify (outside any transaction)."""
        if not due_consent_updates(self.engine, lease.shop_id, self.clock):
            return 0
        client = self._shopify(lease, shop)
        if client is None:
            log.warning("shop %s: consent updates wait, no Shopify access token", lease.domain)
            postpone_consent(self.engine, lease.shop_id, self.clock, "no Shopify access token for this shop")
            return 0
        return write_consent(self.engine, lease, client, self.clock)

    def _prepare_brevo(self, lease: Lease, shop: Shop, client: BrevoClient) -> Shop | None:
        """Create our contact attributes and the shop's list in the Brevo account, once and idempotently."""
        def call(fn: Callable[[], T]) -> T:
            return paced(client.pacer, "contacts", fn)

        try:
            existing = call(client.attribute_names)
            wanted = ShopConfig.from_dict(shop.config).attribute_types(BREVO_ATTRIBUTES)
            for name, attribute_type in wanted.items():
                if name not in existing:
                    options = self._category_options(lease.shop_id) if attribute_type == "multiple-choice" else None
                    try:
                        call(partial(client.create_attribute, name, attribute_type, options))
                    except BrevoRejected as exc:
                        if "unique" not in str(exc).lower():  # created meanwhile: fine
                            raise
            list_id = shop.brevo_list_id
            if list_id is None:
                folder_id = call(lambda: client.create_folder("Shopify"))
                list_id = call(lambda: client.create_list(f"Shopify customers - {shop.domain}", folder_id))
        except BrevoAuthFailed as exc:
            self._pause(lease, exc)
        except BrevoRetriable as exc:
            self._setup_failed(lease, str(exc), retry_in=max(exc.retry_after or 0, 5.0))
            return None
        except BrevoError as exc:
            self._setup_failed(lease, str(exc), retry_in=600)
            return None
        now = self.clock.now()
        created_options = self._category_options(lease.shop_id) if "CATEGORIES_PURCHASED" not in existing else None
        with unit_of_work(self.engine) as session:
            row = session.get(Shop, lease.shop_id)
            assert row is not None
            row.brevo_list_id, row.brevo_ready_at, row.setup_error = list_id, now, None
            if created_options is not None:
                row.brevo_options = created_options
            fence(session, lease, now=now, seconds=self.settings.lease_seconds)
        return row

    def _history_queued(self, lease: Lease) -> bool:
        """History is still to come: a backfill is running, or has staged history not applied yet, or deliveries
        read as history (polls) wait in the shop's inbox. When all it waits for is a running backfill, the shop
        rests a moment when released (see `run_once`)."""
        now = self.clock.now()
        with Session(self.engine) as session:
            running = session.execute(sa.select(col(Backfill.id)).where(
                col(Backfill.shop_id) == lease.shop_id,
                col(Backfill.queued_at) > now - backfill.SILENCE).limit(1)).first() is not None
            staged = backfill.history_pending(session, lease.shop_id)
            # In id order: the pending index's own order, which PostgreSQL then walks whatever its statistics say
            # (counting many pending rows, it read the whole inbox from the start for the first one instead).
            pending = sa.select(col(InboxEntry.id)).where(col(InboxEntry.shop_domain) == lease.domain,
                                                         col(InboxEntry.status) == "pending").order_by(
                col(InboxEntry.id)).limit(1)
            history = session.execute(pending.where(col(InboxEntry.source).in_(HISTORY_SOURCES))).first() is not None
            if running and not history and session.execute(pending).first() is None:
                self.held.add(lease.shop_id)  # nothing else waits in its inbox either
        return running or staged or history

    def _build_profiles(self, lease: Lease, shop: Shop, now: datetime, *, live_only: bool = False,
                        between: Callable[[int], None] | None = None) -> Shop:
        """Every dirty buyer of the shop built (with `live_only`, those news made dirty), a batch per unit of work;
        `between` is called after each batch with how many buyers this call has built so far."""
        with unit_of_work(self.engine) as session:
            shop = session.get(Shop, lease.shop_id) or shop
        context = ShopContext.of(shop, now, freshness_hours=self.settings.event_freshness_hours)
        ahead = Lookahead()
        done = 0
        while True:
            with collected_after(), unit_of_work(self.engine) as session:
                built = build_dirty_contacts(session, context, limit=BUILD_BATCH, live_only=live_only,
                                             helper=self.builder, ahead=ahead)
                fence(session, lease, now=self.clock.now(), seconds=self.settings.lease_seconds)
            if not built:
                if self.builder is not None:
                    self.builder.close()  # no buyer left to build: its helper process ends, if one ran
                return shop
            self.stats.built += built
            self.built_statistics_due = self._statistics(self.stats.built, self.built_statistics_due, BUILT_TABLES)
            done += built
            if between is not None:
                between(done)

    def _imports_while_building(self, lease: Lease, shop: Shop, client: BrevoClient | None
                                ) -> ImportsWhileBuilding | None:
        """What sends the imports that fill up while the shop's buyers are built (see `ImportsWhileBuilding`), on
        PostgreSQL, once the shop's Brevo account is set up."""
        if client is None or shop.brevo_ready_at is None or self.engine.dialect.name != "postgresql":
            # On SQLite the worker's own work keeps its core busy while it builds (its helper reads and computes
            # on the other): what sending imports meanwhile costs it is added to the building (a backfill of
            # 100,000 customers, in runs minutes apart: 188 s without, 197-201 s with). On PostgreSQL it waits for
            # the server meanwhile, and the imports fill those waits: 216-217 s instead of 227.
            return None
        pusher = Pusher(self.engine, client, lease, self.clock, self.policy, list_id=shop.brevo_list_id)
        return ImportsWhileBuilding(pusher, ready=lambda: self._imports_may_go(lease, shop, client), stats=self.stats)

    def _imports_may_go(self, lease: Lease, shop: Shop, client: BrevoClient) -> bool:
        """Whether imports may go before the building is done (asked once it has built `IMPORT_EVERY` buyers): not
        when the shop's RFM figures are to be worked out right after it (its first buyers, the daily recompute),
        which builds again the buyers whose score moves, in the same turn: they would go to Brevo twice (a
        backfill's figures come before its buyers are built); and only once the categories' options are in
        Brevo."""
        with unit_of_work(self.engine) as session:
            row = session.get(Shop, lease.shop_id)
            rfm_due = None if row is None or row.rfm_thresholds is None else as_utc(row.rfm_due_at)
        if rfm_due is None or rfm_due <= self.clock.now():
            return False
        return self._sync_category_options(lease, shop, client)

    def _settle_history_figures(self, lease: Lease, shop: Shop, now: datetime) -> bool:
        """The RFM figures of the contacts only history made dirty (see `settle_history_figures`); whether
        there were any."""
        context = ShopContext.of(shop, now, freshness_hours=self.settings.event_freshness_hours)
        after: str | None = ""
        settled = False
        ahead = Lookahead()
        while after is not None:
            with collected_after(), unit_of_work(self.engine) as session:
                after = settle_history_figures(session, context, after=after, helper=self.builder, ahead=ahead)
                fence(session, lease, now=self.clock.now(), seconds=self.settings.lease_seconds)
                commit_without_waiting(session)  # figures worked out again from the orders if lost
            settled = settled or after is not None
        return settled

    def _has_buyers(self, shop_id: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(col(Contact.contact_key)).where(
                col(Contact.shop_id) == shop_id, col(Contact.order_count) > 0).limit(1)).first() is not None

    def _sync_category_options(self, lease: Lease, shop: Shop, client: BrevoClient) -> bool:
        """Every product type a contact can carry in CATEGORIES_PURCHASED must be one of its options first."""
        name = ShopConfig.from_dict(shop.config).brevo_name("CATEGORIES_PURCHASED")
        options = self._category_options(lease.shop_id)
        if name is None or set(options) <= set(shop.brevo_options or []):
            return True
        try:
            paced(client.pacer, "other", partial(client.update_attribute_options, name, options))
        except BrevoAuthFailed as exc:
            self._pause(lease, exc)
        except BrevoRetriable as exc:
            log.warning("shop %s: could not add categories to %s yet: %s", lease.domain, name, exc)
            return False
        except BrevoError as exc:
            # Refused for good: say so, and deliver anyway (Brevo drops a value it has no option for).
            with unit_of_work(self.engine) as session:
                session.add(DeadLetter(shop_id=lease.shop_id, shop_domain=lease.domain, source="setup",
                                       reference=name, reason=f"options of {name} refused: {exc}",
                                       payload=json.dumps(options), created_at=self.clock.now()))
                session.execute(sa.update(Shop).where(col(Shop.id) == lease.shop_id).values(brevo_options=options))
            shop.brevo_options = options
            return True
        with unit_of_work(self.engine) as session:
            session.execute(sa.update(Shop).where(col(Shop.id) == lease.shop_id).values(brevo_options=options))
        shop.brevo_options = options
        return True

    def _pause(self, lease: Lease, exc: BrevoAuthFailed) -> NoReturn:
        pause_shop(self.engine, lease.shop_id, exc)

    def _category_options(self, shop_id: int) -> list[str]:
        """The shop's product types: the choices of the multiple-choice CATEGORIES_PURCHASED."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(sa.distinct(col(Product.product_type))).where(
                col(Product.shop_id) == shop_id, col(Product.product_type).is_not(None))).scalars().all()
        return sorted(str(r) for r in rows if r)

    def _setup_failed(self, lease: Lease, reason: str, *, retry_in: float) -> None:
        with unit_of_work(self.engine) as session:
            session.execute(sa.update(Shop).where(col(Shop.id) == lease.shop_id).values(
                setup_error=reason, setup_due_at=self.clock.now() + timedelta(seconds=retry_in)))

    def apply_inbox(self, lease: Lease, shop: Shop) -> int:
        """Apply one batch of the shop's pending deliveries in one unit of work; returns the batch size.

        The batch is applied as a whole: one prefetch of what it touches, bulk writes. Should anything in
        it fail, that unit of work is rolled back and the batch applied again one delivery at a time, each
        in a savepoint, so that the failing delivery is quarantined with its error and the others land.
        """
        return self._apply(lease, shop, self._inbox_batch)

    def apply_history(self, lease: Lease, shop: Shop) -> int:
        """Apply the next chunk of the shop's staged backfill (`backfill.take_history`) as `apply_inbox` applies a
        batch, the chunk's checkpoint in the same unit of work; returns the chunk's size (0: none is ready)."""
        try:
            size = self._apply(lease, shop, self._history_batch, redone=True)
        except backfill.StagedLinesLost as exc:
            if self.reader is not None:
                self.reader.forget(lease.shop_id)
            backfill.history_lost(self.engine, exc, self.clock.now())
            return 1  # the shop's next backfill, if any, is taken next
        if not size and self.reader is not None:
            self.reader.forget(lease.shop_id)
            if not self.reader.reading:
                self.reader.close()  # no history left to read here: its helper process ends
        return size

    def _apply(self, lease: Lease, shop: Shop,
               take: Callable[[sa.orm.Session, Lease, bool], tuple[list[Delivery], Prepared | None]], *,
               redone: bool = False) -> int:
        """Apply the batch `take` gives, in one unit of work (one delivery at a time after a failure); with
        `redone` (staged history, whose lines go in the same commit), one that commits without waiting for the
        disk (`commit_without_waiting`). Applied one at a time, a batch commits as any other, waiting."""
        try:
            with collected_after(), unit_of_work(self.engine) as session:
                size, tally = self._apply_batch(session, lease, shop, *take(session, lease, False), one_by_one=False)
                if redone:
                    commit_without_waiting(session)
        except (LeaseLost, backfill.StagedLinesLost):
            raise
        except Exception as exc:
            log.info("shop %s: a delivery of the batch failed (%s: %s); applying one at a time",
                     lease.domain, type(exc).__name__, exc)
            with collected_after(), unit_of_work(self.engine) as session:
                size, tally = self._apply_batch(session, lease, shop, *take(session, lease, True), one_by_one=True)
        self.stats.applied += tally.applied
        self.stats.failed += tally.failed
        self.stats.ignored += tally.ignored
        self.statistics_due = self._statistics(self.stats.applied, self.statistics_due, MIRROR_TABLES)
        return size

    def _statistics(self, done: int, due: int, tables: tuple[sa.Table, ...]) -> int:
        """Refresh PostgreSQL's statistics of `tables` once `done` (deliveries applied, buyers built) has reached
        `due`; returns the count at which they are next due: twice `done`. The first refresh of these tables by
        this worker is waited for (they may have grown from nothing, and are planned as empty until then); the
        next ones, each of tables twice as large as at the one before, run beside the work, in a thread of their
        own (a 20,000-customer backfill on PostgreSQL waited 3 s for them), one after the other: while a group's
        refresh is still queued or running, its next one waits for the next batch."""
        if done < due:
            return due
        group = tuple(table.name for table in tables)
        if group not in self.refreshed or self.engine.dialect.name != "postgresql":
            refresh_statistics(self.engine, *tables)
            self.refreshed.add(group)
            return 2 * done
        running = self.refreshing.get(group)
        if running is not None and not running.done():
            return due
        if self.statistics_thread is None:
            self.statistics_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="statistics")
        self.refreshing[group] = running = self.statistics_thread.submit(refresh_statistics, self.engine, *tables)
        running.add_done_callback(_log_failed_refresh)
        return 2 * done

    def _inbox_batch(self, session: sa.orm.Session, lease: Lease, one_by_one: bool
                     ) -> tuple[list[Delivery], Prepared | None]:
        """The shop's next pending deliveries, up to the first pending lifecycle or privacy delivery: those are
        applied in their turn (`_lifecycle`)."""
        first_lifecycle = sa.select(sa.func.min(InboxEntry.id)).where(
            col(InboxEntry.shop_domain) == lease.domain, col(InboxEntry.status) == "lifecycle").scalar_subquery()
        pending = sa.select(
            col(InboxEntry.id), col(InboxEntry.event_id), col(InboxEntry.topic), col(InboxEntry.source),
            col(InboxEntry.body), col(InboxEntry.triggered_at), col(InboxEntry.received_at)).where(
            col(InboxEntry.shop_domain) == lease.domain, col(InboxEntry.status) == "pending",
            col(InboxEntry.id) < sa.func.coalesce(first_lifecycle, 2 ** 62)).order_by(col(InboxEntry.id))
        entries = [Delivery(*row) for row in session.execute(pending.limit(INBOX_BATCH))]
        if HISTORY_BATCH > len(entries) == INBOX_BATCH and all(e.source in HISTORY_SOURCES for e in entries):
            # History (a poll) goes in larger batches: nobody waits on it, and each batch's fixed cost (its
            # lookups, its commit) is then shared by more deliveries.
            entries += [Delivery(*row) for row in session.execute(
                pending.where(col(InboxEntry.id) > entries[-1].id).limit(HISTORY_BATCH - INBOX_BATCH))]
        return entries, None

    def _history_batch(self, session: sa.orm.Session, lease: Lease, one_by_one: bool
                       ) -> tuple[list[Delivery], Prepared | None]:
        """The shop's next chunk of staged history, and what the reading helper prepared from it (when it read
        it). Applied one object at a time (after a failure), each object comes with its payload, read here: one
        the applier cannot take is set aside with it."""
        now = self.clock.now()
        chunk = backfill.take_history(session, lease.shop_id, lease.domain, now=now, limit=HISTORY_BATCH,
                                      reader=None if one_by_one else self.reader)
        if chunk is None:
            return [], None
        return [Delivery(None, event_id, chunk.resource.topic, "backfill", "", None, now, payload=payload,
                         record=record) for event_id, payload, record in chunk.objects], chunk.prepared

    def _apply_batch(self, session: sa.orm.Session, lease: Lease, shop: Shop, entries: list[Delivery],
                     prepared: Prepared | None, *, one_by_one: bool) -> tuple[int, WorkerStats]:
        now = self.clock.now()
        window = timedelta(hours=self.settings.event_freshness_hours)
        config = ShopConfig.from_dict(shop.config)
        consent_to_shopify = config.consent_to_shopify()
        order_bodies = prepared.order_bodies if prepared is not None else {}
        tally = WorkerStats()
        parsed: list[tuple[Delivery, Topic, Any]] = []
        for entry in entries:
            topic = TOPICS.get(entry.topic)
            if topic is None:
                entry.status = "ignored"
                tally.ignored += 1
                continue
            if entry.record is not None:  # read by the helper process
                parsed.append((entry, topic, entry.record))
                continue
            try:
                payload = entry.payload if entry.payload is not None else jsontext.loads(entry.body)
                if not isinstance(payload, dict):
                    raise PayloadError("the body is not a JSON object")
                parsed.append((entry, topic, topic.parse(payload)))
            except (ValueError, PayloadError) as exc:
                self._quarantine(session, entry, lease, f"unreadable {entry.topic} payload: {exc}", tally)
        batch = BatchMirror(session, lease.shop_id)
        if not one_by_one:
            batch.prefetch(prepared.wanted if prepared is not None else wanted_by(rec for _, _, rec in parsed))
        dirty: dict = {}
        for entry, topic, rec in parsed:
            happened = as_utc(entry.triggered_at) or as_utc(entry.received_at) or now
            fresh = now - happened <= window
            ctx = ApplyContext(session=session, mirror=BatchMirror(session, lease.shop_id) if one_by_one else batch,
                               shop_id=lease.shop_id, shop_domain=lease.domain,
                               shop_currency=shop.currency, now=now, live=entry.source == "webhook",
                               consent_to_shopify=consent_to_shopify,
                               fresh=fresh, dirty=dirty, event_enabled=config.event_enabled,
                               order_bodies=order_bodies,
                               happened=happened if entry.source == "webhook" and fresh else now,
                               stale_reason=None if fresh else
                               f"delivery older than {self.settings.event_freshness_hours:g} h: not a trigger")
            if not one_by_one:
                outcome = topic.apply(ctx, rec)
                write_events(ctx)
            else:
                try:
                    with session.begin_nested():
                        ctx.mirror.prefetch(wanted_by([rec]))
                        outcome = topic.apply(ctx, rec)
                        write_events(ctx)
                        ctx.mirror.write()
                    ctx.mirror.attach()  # its savepoint held: a later delivery may change what it created
                except (ValueError, PayloadError) as exc:
                    self._quarantine(session, entry, lease, f"unreadable {entry.topic} payload: {exc}", tally)
                    dirty.clear()
                    continue
                except Exception as exc:  # a bug must not stop the shop: keep the delivery, show the error
                    log.exception("applying %s failed", f"inbox {entry.id}" if entry.id else entry.event_id)
                    self._quarantine(session, entry, lease, f"internal error applying {entry.topic}: "
                                                            f"{type(exc).__name__}: {exc}", tally)
                    dirty.clear()
                    continue
            entry.status = "applied" if outcome == "applied" else "superseded"
            tally.applied += 1
        batch.write()
        # Each inbox delivery's outcome: one statement per outcome (nearly always one: "applied") for a list of
        # ids, not one per delivery (PostgreSQL runs each of those on its own: about 27 ms a batch of 1,000).
        # An object of a staged backfill has no inbox row (one set aside got one: `_quarantine`).
        outcomes: dict[tuple[str, str | None], list[int]] = defaultdict(list)
        for e in entries:
            if e.id is not None and e.payload is None:
                outcomes[(e.status, e.error)].append(e.id)
        inbox = InboxEntry.__table__  # type: ignore[attr-defined]
        for (status, error), ids in outcomes.items():
            for chunk in chunked(ids):
                session.execute(sa.update(inbox).where(one_of(inbox.c.id, chunk, session)).values(
                    status=status, error=error, processed_at=now))
        fence(session, lease, now=now, seconds=self.settings.lease_seconds)
        return len(entries), tally

    def _quarantine(self, session: sa.orm.Session, entry: InboxEntry | Delivery, lease: Lease, reason: str,
                    tally: WorkerStats) -> None:
        entry.status, entry.error = "failed", reason
        if isinstance(entry, Delivery) and entry.payload is not None:
            # An object of a staged backfill: kept as a failed inbox delivery, which `dead-letters retry` applies
            # again like any other (its staged lines are gone with its chunk).
            insert_new(session, InboxEntry, [{
                "shop_domain": lease.domain, "event_id": entry.event_id, "topic": entry.topic,
                "source": entry.source, "body": jsontext.dumps(entry.payload), "status": "failed", "error": reason,
                "received_at": entry.received_at, "processed_at": self.clock.now()}], ["shop_domain", "event_id"])
            entry.id = session.execute(sa.select(col(InboxEntry.id)).where(
                col(InboxEntry.shop_domain) == lease.domain, col(InboxEntry.event_id) == entry.event_id)).scalar_one()
        session.add(DeadLetter(shop_id=lease.shop_id, shop_domain=lease.domain, source="inbox",
                               reference=f"inbox:{entry.id}:{entry.event_id}", topic=entry.topic, reason=reason,
                               created_at=self.clock.now()))
        tally.failed += 1
