"""The pusher: pending contacts and outbox events -> Brevo, batched and paced; retry, or dead-letter with the reason."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NoReturn, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from connector import jsontext
from connector.brevo import (
    BrevoAuthFailed,
    BrevoClient,
    BrevoRejected,
    BrevoRetriable,
    Reply,
    paced,
)
from connector.clock import Clock, as_utc
from connector.database import chunked, forget_erased, one_of, unit_of_work, update_many
from connector.models import OUTBOX_PENDING, Contact, DeadLetter, OutboxEntry, Product, Shop
from mappings.ecommerce import HISTORY_ORDER, CatalogProduct, categories_of, category_body, product_body
from mappings.profile import body_hash as catalog_hash
from sync.compliance import ERASE
from sync.profiles import strip_memory
from sync.queue import Lease, fence

T = TypeVar("T")
PLAN_PAGE = 2000  # contacts read at a time to plan the imports


class ShopPaused(Exception):
    """Brevo refused the shop's API key, or Shopify its token: the shop is paused until the merchant fixes it."""


def pause_shop(engine: Engine, shop_id: int, exc: Exception) -> NoReturn:
    """Pause the shop with the refusal's reason (shown by `connector shops list`) and stop its work."""
    reason = f"Brevo refused the API key: {exc}" if isinstance(exc, BrevoAuthFailed) else str(exc)
    with unit_of_work(engine) as session:
        session.execute(sa.update(Shop).where(col(Shop.id) == shop_id).values(status="paused", paused_reason=reason))
    raise ShopPaused(str(exc)) from None


# What an anonymised contact loses in Brevo (besides its email and ext_id): who they are and where they live.
_PERSONAL_ATTRIBUTES = ("FIRSTNAME", "LASTNAME", "SMS", "CITY", "CUSTOMER_TAGS", "SHOPIFY_CUSTOMER_ID")


@dataclass(frozen=True, kw_only=True)
class PushPolicy:
    """How the pusher chooses between single and batch calls (see README, "Delivery to Brevo")."""

    single_max: int = 20  # a backlog this small goes out as single calls: lowest latency
    singles_per_turn: int = 1000  # contacts that must go one by one: at most this many calls in one turn
    import_max_rows: int = 10_000
    import_max_bytes: int = 8_000_000  # Brevo advises 8 MB for /contacts/import
    batch_max_events: int = 1000
    batch_max_bytes: int = 4_000_000
    other_reserve: int = 10  # calls of the 100/hour bucket kept back for account set-up
    process_reserve: int = 2  # import checks may use the set-up reserve down to this many calls
    import_settle_seconds: float = 5.0  # Brevo applies imports asynchronously
    history_seconds: float = 5.0  # history's orders read on, page after page, for up to this long in one turn
    max_inline_wait: float = 2.0  # longer waits release the shop instead of blocking the worker
    max_backoff_seconds: float = 300.0
    lease_seconds: float = 30.0


# What `Pusher._due_events` reads of an outbox row: what sending it, settling it and trying it again use.
_SENT_COLUMNS = ("id", "shop_id", "idempotency_key", "event_name", "target", "contact_key", "body", "attempts")


class Pusher:
    def __init__(self, engine: Engine, client: BrevoClient, lease: Lease, clock: Clock,
                 policy: PushPolicy | None = None, *, list_id: int | None = None,
                 reading: Engine | None = None) -> None:
        """`reading`: a read-only engine of the same database, with which the next page of history's orders is
        read while the page before goes to Brevo (without one, each page is read in turn)."""
        self.engine, self.client, self.lease, self.clock = engine, client, lease, clock
        self.reading = reading
        self.policy = policy or PushPolicy()
        self.list_id = list_id
        self._held_back = False  # a contacts call this turn was answered "wait": the rest waits for the next turn

    @property
    def held_back(self) -> bool:
        """Brevo asked to wait for a contacts call of this turn: no more contacts go until the next one."""
        return self._held_back

    # --- calling Brevo ----------------------------------------------------------------------

    def _send(self, family: str, call: Callable[[], T]) -> T:
        return paced(self.client.pacer, family, call, max_inline_wait=self.policy.max_inline_wait)

    def _backoff(self, attempts: int, exc: BrevoRetriable) -> datetime:
        delay = exc.retry_after if exc.retry_after is not None else min(2.0 ** attempts,
                                                                          self.policy.max_backoff_seconds)
        return self.clock.now() + timedelta(seconds=max(delay, 0.5))

    def _pause(self, exc: BrevoAuthFailed) -> NoReturn:
        pause_shop(self.engine, self.lease.shop_id, exc)

    # --- contacts ---------------------------------------------------------------------------

    def push_contacts(self, *, full_only: bool = False) -> int:
        """Send every due pending contact. Returns how many Brevo accepted.

        The backlog is read a page at a time, keeping of each contact only its key, how it must go and its import
        row's size; an import is sent as soon as it is full, its contacts read again only then, and what is left
        of each kind of import goes out at the end. Memory holds an import or two whatever the backlog (a
        backfill's hundred thousand contacts), and every import but the last of each kind is full. A turn sends
        at most `singles_per_turn` contacts one by one, and stops at the first call Brevo asks to wait for: the
        rest stays due for the next turn, its attempts untouched.

        With `full_only` (between two batches of buyers being built: `Worker._build_profiles`), only full imports
        go: what is left of each kind, and the contacts that must go one by one, wait for the next call."""
        now = self.clock.now()
        groups: dict[tuple[bool, bool], list[tuple[str, int]]] = {}
        delivered, after, first, single_calls = 0, "", True, 0
        self._held_back = False
        if full_only and self.list_id is None:
            return 0  # no import without the shop's list
        while True:
            singles, more = self._plan_contacts(now, after, groups)
            if full_only:
                singles = []
            elif self.list_id is None or (first and not more
                                          and sum(map(len, groups.values())) <= self.policy.single_max):
                singles = sorted(singles + [key for group in groups.values() for key, _ in group])  # a few: at once
                groups = {}
            single_calls += len(singles)
            last = more is None or single_calls >= self.policy.singles_per_turn
            for (email_out, sms_out), group in sorted(groups.items()):
                chunks = self._import_chunks(group)
                if (full_only or not last) and chunks:  # the last one may fill up on the next page (or call)
                    group[:] = group[len(group) - len(chunks.pop()):]
                else:
                    group.clear()
                delivered += self._imports(chunks, now, email_blacklist=email_out, sms_blacklist=sms_out)
                if self._held_back:
                    return delivered
            for start in range(0, len(singles), 500):
                for contact in self._load_contacts(singles[start:start + 500], now):
                    delivered += self._push_one(contact)
                    if self._held_back:
                        return delivered
            if last:
                return delivered
            assert more is not None
            after, first = more, False

    def _plan_contacts(self, now: datetime, after: str, groups: dict[tuple[bool, bool], list[tuple[str, int]]]
                       ) -> tuple[list[str], str | None]:
        """One page of the due contacts after the key `after`: those that must go one by one are returned, the
        others added to the import of their kind (an import blacklists all its rows or none); and the key to
        read on from, or None at the end."""
        singles: list[str] = []
        with unit_of_work(self.engine) as session:
            page = session.connection().execute(sa.select(
                col(Contact.contact_key), col(Contact.pending), col(Contact.sent), col(Contact.brevo_email),
                col(Contact.one_by_one)).where(*self._due_contacts(now), col(Contact.contact_key) > after)
                .order_by(col(Contact.contact_key)).limit(PLAN_PAGE)).all()
        for key, pending, sent, brevo_email, one_by_one in page:
            body = pending or {}
            if _needs_single_call(body, sent, brevo_email, one_by_one):
                singles.append(key)
            else:
                groups.setdefault((body.get("emailBlacklisted") is True, body.get("smsBlacklisted") is True),
                                  []).append((key, len(jsontext.dumpb(_import_row(body))) + 1))
        more = page[-1][0] if len(page) == PLAN_PAGE else None
        return singles, more

    def _due_contacts(self, now: datetime) -> tuple[Any, ...]:
        return (col(Contact.shop_id) == self.lease.shop_id, col(Contact.push_state) == "pending",
                sa.or_(col(Contact.next_attempt_at).is_(None), col(Contact.next_attempt_at) <= now))

    def _load_contacts(self, keys: Sequence[str], now: datetime) -> list[Contact]:
        """These contacts, if still due, in the order of `keys`: plain rows of the columns sending reads (an
        import's ten thousand ORM objects would hold twice the memory).

        Read by primary key alone, and judged due here: with the due conditions in the query, SQLite looked the
        keys up through the push-state index instead, that is, it read every pending contact of the shop for each
        chunk of keys (measured at 100,000 customers: about 17 s of the 53 s the contact imports took)."""
        found: dict[str, Contact] = {}
        with unit_of_work(self.engine) as session:
            for part in chunked(keys):
                for row in session.connection().execute(sa.select(
                        col(Contact.shop_id), col(Contact.contact_key), col(Contact.pending), col(Contact.pending_hash),
                        col(Contact.sent), col(Contact.brevo_email), col(Contact.attempts), col(Contact.push_state),
                        col(Contact.next_attempt_at)).where(
                        col(Contact.shop_id) == self.lease.shop_id, one_of(col(Contact.contact_key), part, session))):
                    if row.push_state == "pending" and due(row.next_attempt_at, now):
                        found[row.contact_key] = cast(Contact, row)
        return [found[key] for key in keys if key in found]

    def _import_chunks(self, planned: Sequence[tuple[str, int]]) -> list[list[str]]:
        """Keys cut into imports of at most `import_max_rows` rows and `import_max_bytes` bytes."""
        chunks: list[list[str]] = []
        current: list[str] = []
        size = 200
        for key, row_size in planned:
            full = len(current) >= self.policy.import_max_rows or size + row_size > self.policy.import_max_bytes
            if current and full:
                chunks.append(current)
                current, size = [], 200
            current.append(key)
            size += row_size
        if current:
            chunks.append(current)
        return chunks

    def _imports(self, chunks: Sequence[list[str]], now: datetime, *, email_blacklist: bool,
                 sms_blacklist: bool) -> int:
        """Each chunk's contacts still due sent as one import, in turn, with one overlap (as `_send_batches`
        sends orders): while Brevo takes an import, the next one's contacts are read and its rows made; it is sent
        once Brevo has answered the one before, and then, while it is on its way, that answer is written. Nothing
        more is sent once an answer holds the turn back. Returns how many contacts Brevo accepted."""
        delivered = 0
        flight: tuple[list[Contact], Future[Reply]] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="brevo-imports") as sending:
            for keys in [*chunks, None]:
                contacts = self._load_contacts(keys, now) if keys is not None else []
                rows = [_import_row(c.pending or {}) for c in contacts]
                answered: tuple[list[Contact], Reply] | None = None
                if flight is not None:
                    previous, sent = flight
                    flight = None
                    try:
                        answered = previous, sent.result()
                    except (BrevoAuthFailed, BrevoRetriable, BrevoRejected) as exc:
                        delivered += self._import_failed(previous, exc)
                        if self._held_back:
                            return delivered
                if contacts:
                    flight = contacts, sending.submit(self._post_import, rows, email_blacklist=email_blacklist,
                                                      sms_blacklist=sms_blacklist)
                if answered is not None:
                    try:
                        delivered += self._import_answered(*answered)
                    except BaseException:
                        if flight is not None:
                            flight[1].cancel()  # not sent if it has not started yet
                        raise
        return delivered

    def _post_import(self, rows: list[dict[str, Any]], *, email_blacklist: bool, sms_blacklist: bool) -> Reply:
        assert self.list_id is not None
        list_id = self.list_id
        return self._send("contacts", lambda: self.client.import_contacts(
            rows, list_id, email_blacklist=email_blacklist, sms_blacklist=sms_blacklist))

    def _import_failed(self, chunk: list[Contact], exc: Exception) -> int:
        if isinstance(exc, BrevoAuthFailed):
            self._pause(exc)
        if isinstance(exc, BrevoRetriable):
            self._reschedule_contacts(chunk, exc)
            return 0
        # One bad row fails the whole import: find it by sending the rows one by one.
        return sum(self._push_one(c) for c in chunk)

    def _import_answered(self, chunk: list[Contact], reply: Reply) -> int:
        settle = self.clock.now() + timedelta(seconds=self.policy.import_settle_seconds)
        process = (reply.body or {}).get("processId") if isinstance(reply.body, dict) else None
        self._mark_contacts_sent(chunk, visible_at=settle, process=int(process) if process else None)
        return len(chunk)

    def check_imports(self, *, now: datetime | None = None) -> int:
        """Ask Brevo how the imports settled by `now` went. An import that skipped rows (Brevo says how many,
        not which) sends its contacts again one by one, where a refusal comes back with its reason and is
        dead-lettered; the others are done. Returns how many contacts were sent again. The worker passes the
        `now` its events were judged at: an import that settled after that waits for the next turn, so its
        check never takes a batch's place in the shared budget."""
        now = now or self.clock.now()
        other_left = self.client.pacer.remaining("other")
        if other_left is not None and other_left <= self.policy.process_reserve:
            return 0  # Brevo's 100-per-hour budget is spent: the imports are checked when it frees
        with unit_of_work(self.engine) as session:
            processes = session.execute(sa.select(sa.distinct(col(Contact.import_process))).where(
                col(Contact.shop_id) == self.lease.shop_id, col(Contact.import_process).is_not(None),
                col(Contact.visible_at) <= now).limit(20)).scalars().all()
        again = 0
        for process in processes:
            assert process is not None
            try:
                status, skipped = self._send("other", partial(self.client.import_process, process))
            except BrevoAuthFailed as exc:
                self._pause(exc)
            except BrevoRejected:
                status, skipped = "unknown", 1  # Brevo does not know it: check its contacts one by one
            except BrevoRetriable:
                return again
            where = (col(Contact.shop_id) == self.lease.shop_id, col(Contact.import_process) == process)
            with unit_of_work(self.engine) as session:
                if status in ("queued", "in_process", "processing"):
                    session.execute(sa.update(Contact).where(*where).values(
                        visible_at=now + timedelta(seconds=self.policy.import_settle_seconds)))
                elif status == "completed" and skipped == 0:
                    session.execute(sa.update(Contact).where(*where).values(import_process=None))
                else:  # rows skipped, or the import failed: what was sent goes again, one by one
                    # (a contact with a newer body pending sends that one, one by one too)
                    again += session.execute(sa.update(Contact).where(*where, col(Contact.push_state) == "idle").values(
                        pending=Contact.sent, pending_hash=Contact.sent_hash, push_state="pending", attempts=0,
                        next_attempt_at=None, one_by_one=True, import_process=None)).rowcount  # type: ignore[attr-defined]
                    session.execute(sa.update(Contact).where(*where).values(one_by_one=True, import_process=None))
                fence(session, self.lease, now=now, seconds=self.policy.lease_seconds)
        return again

    def _push_one(self, contact: Contact) -> int:
        body = strip_memory(contact.pending or {})
        ext_id = body.get("ext_id")
        moved = contact.brevo_email is not None and body.get("email") != contact.brevo_email
        segment_lists = body.pop("listIds", None)
        list_ids = ([self.list_id] if self.list_id else []) + list(segment_lists or [])
        left = sorted(set((contact.sent or {}).get("listIds") or []) - set(segment_lists or []))

        def call() -> Reply:
            if moved and ext_id:
                # An email change in Shopify updates the Brevo contact found by ext_id; never a second one.
                update = dict(body)
                update["attributes"] = {**body.get("attributes", {}), "EMAIL": body.get("email")}
                if list_ids:
                    update["listIds"] = list_ids
                if left:
                    update["unlinkListIds"] = left
                try:
                    return self.client.update_contact_by_ext_id(str(ext_id), update)
                except BrevoRejected as exc:
                    if exc.status != 404:
                        raise
            reply = self.client.upsert_contact(body, list_ids)
            if left:  # the buyer left a segment (or the rule went): out of its list; the upsert cannot unlink
                sms = body.get("attributes", {}).get("SMS")
                identifier, by = ((body["email"], "email_id") if body.get("email") else
                                  (ext_id, "ext_id") if ext_id else (sms, "phone_id"))
                if identifier:
                    reply = self.client.unlink_lists(str(identifier), left, by=by)
            return reply

        try:
            self._send("contacts", call)
        except BrevoAuthFailed as exc:
            self._pause(exc)
        except BrevoRetriable as exc:
            self._reschedule_contacts([contact], exc)
            return 0
        except BrevoRejected as exc:
            self._dead_contact(contact, str(exc))
            return 0
        self._mark_contacts_sent([contact], visible_at=self.clock.now())
        return 1

    def _mark_contacts_sent(self, contacts: Sequence[Contact], *, visible_at: datetime,
                            process: int | None = None) -> None:
        """What Brevo now holds, in one `update_many` for the chunk; a contact rebuilt meanwhile stays pending.

        The body sent is the one pending, as its hash says: the table copies it (`sent = pending`) instead of the
        connector serialising and binding each body again (an import's 8 MB, row by row)."""
        now = self.clock.now()
        rows = [{"shop_id": c.shop_id, "contact_key": c.contact_key, "pending_hash": c.pending_hash,
                 "sent_hash": c.pending_hash, "brevo_email": (c.pending or {}).get("email") or c.brevo_email}
                for c in contacts]
        with unit_of_work(self.engine) as session:
            table = Contact.__table__  # type: ignore[attr-defined]
            update_many(session, table, rows, ("shop_id", "contact_key", "pending_hash"), copied={"sent": "pending"},
                        fixed={"pending": None, "pending_hash": None, "push_state": "idle", "attempts": 0,
                               "next_attempt_at": None, "last_error": None, "pushed_at": now,
                               "visible_at": visible_at, "import_process": process, "one_by_one": False})
            session.execute(sa.update(Shop).where(col(Shop.id) == self.lease.shop_id).values(last_push_at=now))
            fence(session, self.lease, now=now, seconds=self.policy.lease_seconds)

    def _reschedule_contacts(self, contacts: Sequence[Contact], exc: BrevoRetriable) -> None:
        self._held_back = True  # Brevo asked to wait: this turn sends no more contacts
        table = Contact.__table__  # type: ignore[attr-defined]
        statement = sa.update(table).where(
            table.c.shop_id == sa.bindparam("b_shop"), table.c.contact_key == sa.bindparam("b_key")).values(
            attempts=sa.bindparam("b_attempts"), last_error=str(exc)[:2000],
            next_attempt_at=sa.bindparam("b_next", type_=table.c.next_attempt_at.type))
        rows = [{"b_shop": c.shop_id, "b_key": c.contact_key, "b_attempts": c.attempts + 1,
                 "b_next": self._backoff(c.attempts + 1, exc)} for c in contacts]
        with unit_of_work(self.engine) as session:
            if rows:
                session.connection().execute(statement, rows)
            fence(session, self.lease, now=self.clock.now(), seconds=self.policy.lease_seconds)

    def _dead_contact(self, contact: Contact, reason: str) -> None:
        now = self.clock.now()
        with unit_of_work(self.engine) as session:
            session.execute(sa.update(Contact).where(
                col(Contact.shop_id) == contact.shop_id, col(Contact.contact_key) == contact.contact_key)
                .values(push_state="dead", last_error=reason[:2000]))
            session.add(DeadLetter(shop_id=contact.shop_id, shop_domain=self.lease.domain, source="contact",
                                   reference=contact.contact_key, reason=reason,
                                   payload=json.dumps(strip_memory(contact.pending or {})), created_at=now))
            fence(session, self.lease, now=now, seconds=self.policy.lease_seconds)

    # --- erasures (customers/redact) -----------------------------------------------------------

    def push_erasures(self, *, pause: bool = True) -> int:
        """Delete (or anonymise) the Brevo contacts of erased customers. The row names the contact by its
        ext_id, then the emails and phones Brevo knew it by; once Brevo answered (a contact it does not hold
        is erased already) only the ext_id is kept. `pause`: a refused key pauses the shop (not done for a shop
        that is no longer active: the erasure is dead-lettered for the merchant instead)."""
        now = self.clock.now()
        with unit_of_work(self.engine) as session:
            rows = session.execute(sa.select(OutboxEntry).where(
                col(OutboxEntry.shop_id) == self.lease.shop_id, col(OutboxEntry.target) == ERASE, OUTBOX_PENDING,
                sa.or_(col(OutboxEntry.next_attempt_at).is_(None), col(OutboxEntry.next_attempt_at) <= now))
                .order_by(col(OutboxEntry.id)).limit(50)).scalars().all()
        erased = 0
        for entry in rows:
            try:
                found = self._erase(entry.body)
            except BrevoAuthFailed as exc:
                # The erasure waits, identifiers kept, for a key Brevo takes: an active shop is paused (the
                # merchant sees why), another one tries again in an hour.
                self._reschedule_events([entry], BrevoRetriable(str(exc), retry_after=3600.0))
                if pause:
                    self._pause(exc)
                continue
            except BrevoRetriable as exc:
                self._reschedule_events([entry], exc)
                break
            except BrevoRejected as exc:
                self._erasure_settled(entry, found=None, error=str(exc))
                continue
            self._erasure_settled(entry, found=found, error=None)
            erased += 1
        if rows:
            forget_erased(self.engine)  # the identifiers the rows held are gone from the disk too
        return erased

    def _erase(self, body: dict[str, Any]) -> bool:
        """Delete (or anonymise) every Brevo contact the identifiers name (a guest the customer once was may have
        a contact of its own); True when there was at least one."""
        candidates = [(body.get("ext_id"), "ext_id")] + [(e, "email_id") for e in body.get("emails") or []] \
            + [(p, "phone_id") for p in body.get("phones") or []]
        found = False
        for n, (identifier, by) in enumerate(candidates):
            if not identifier:
                continue
            if body.get("mode") == "anonymise":
                digest = hashlib.sha256(f"{json.dumps(candidates)}:{n}".encode()).hexdigest()[:16]
                call = partial(self.client.anonymise_contact, str(identifier), by=by, alias=f"redacted-{digest}",
                               attributes=_PERSONAL_ATTRIBUTES)
            else:
                call = partial(self.client.delete_contact, str(identifier), by=by)
            try:
                self._send("contacts", call)
                found = True
            except BrevoRejected as exc:
                if exc.status != 404:  # 404: none by that identifier (or erased by an earlier one)
                    raise
        return found

    def _erasure_settled(self, entry: OutboxEntry, *, found: bool | None, error: str | None) -> None:
        kept = {"ext_id": entry.body.get("ext_id"), "mode": entry.body.get("mode"), "found": found}
        now = self.clock.now()
        with unit_of_work(self.engine) as session:
            session.execute(sa.update(OutboxEntry).where(col(OutboxEntry.id) == entry.id).values(
                status="dead" if error else "delivered", body=kept, last_error=error,
                delivered_at=None if error else now))
            if error:
                session.add(DeadLetter(shop_id=entry.shop_id, shop_domain=self.lease.domain, source="event",
                                       reference=entry.idempotency_key, topic=entry.event_name,
                                       reason=f"{error}: erase the contact {kept['ext_id'] or ''} in Brevo by hand",
                                       payload=json.dumps(kept), created_at=now))

    # --- events -----------------------------------------------------------------------------

    def push_events(self, target: str = "event", *, now: datetime | None = None) -> int:
        """Send due outbox rows (events; with target "order" live ecommerce orders, with "order_history" orders
        read as history, in `historical` batches of up to 1,000) whose buyer's attributes are
        already in Brevo. Returns how many Brevo accepted. Events and orders of one pass are judged at the
        same `now`, so a buyer's events go before (and batch no worse than) their orders.

        History's orders are read on, page after page (each after the last row of the one before), for up to
        `history_seconds`, while Brevo takes every batch: a backfill queues them by the hundred thousand, and on
        PostgreSQL each new read from the first pending row walks again the index entries of every row already
        delivered (their old versions, until a vacuum), so that one read per page, each from the start, cost
        more with every page. The next page is read (by a thread of its own, on a connection of its own) while
        the batches of the one before go to Brevo (with `reading`); it is sent only if that one went whole and
        the turn's share is not spent meanwhile (else the next turn reads it again)."""
        now = now or self.clock.now()
        rows = self._due_events(target, now, 0)
        if not rows:
            return 0
        other_left = self.client.pacer.remaining("other")
        room = other_left is None or other_left > self.policy.other_reserve
        if target != HISTORY_ORDER:
            if len(rows) <= self.policy.single_max or not room:
                return sum(self._send_one(entry) for entry in rows[: self.policy.single_max * 5])
            return self._send_batches(self._event_chunks(rows))
        began = time.monotonic()
        delivered = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-pages") as next_page:
            while rows:
                other_left = self.client.pacer.remaining("other")
                if other_left is not None and other_left <= self.policy.other_reserve:
                    break  # history has no single-call way in (the single order endpoint is live)
                after, full = rows[-1].id or 0, len(rows) == self._events_page
                spent = time.monotonic() - began >= self.policy.history_seconds
                ahead = (next_page.submit(self._due_events, target, now, after, self.reading)
                         if full and not spent and self.reading is not None else None)
                sent = self._send_batches(self._event_chunks(rows))
                delivered += sent
                if sent < len(rows) or not full or time.monotonic() - began >= self.policy.history_seconds:
                    break  # something waits (a retry, a refusal), the end, or the turn's share is spent
                rows = ahead.result() if ahead is not None else self._due_events(target, now, after)
        return delivered

    @property
    def _events_page(self) -> int:
        return self.policy.batch_max_events * 10

    def _due_events(self, target: str, now: datetime, after: int,
                    engine: Engine | None = None) -> list[OutboxEntry]:
        """Up to a page of the shop's due rows of `target` after the row id `after`, in id order (read with
        `engine`, by default the pusher's own)."""
        # A row waits while its buyer's attributes may not be in Brevo yet: the buyer is dirty, their body is pending,
        # or the import that carried it may not be applied yet. Asked of each row's own buyer, by primary key, as
        # the rows are read in id order, until there are enough. (As `NOT IN` a set of waiting buyers, PostgreSQL,
        # once its statistics counted many of them, compared every row with the whole set: 10 s instead of 4 to
        # send 50,000 historical orders. As a plain NOT EXISTS, it joined every pending row of the shop with every
        # waiting buyer for each call, 0.4 s at 300,000 rows; `OFFSET 0` keeps it a lookup per row read, 0.15 s.)
        waiting = sa.select(sa.literal(1)).where(
            col(Contact.shop_id) == col(OutboxEntry.shop_id), col(Contact.contact_key) == col(OutboxEntry.contact_key),
            sa.or_(col(Contact.push_state) == "pending", col(Contact.dirty) == sa.true(),
                   col(Contact.visible_at) > now)).offset(0).exists()
        # The columns sending and settling read (not the row's times, status or last error: turning each stored
        # time back into a datetime cost SQLite a third of reading a page of history's orders).
        table = OutboxEntry.__table__  # type: ignore[attr-defined]
        columns = [table.c[name] for name in _SENT_COLUMNS]
        if target == HISTORY_ORDER:
            # History's orders go to Brevo as they were stored: their bodies read as JSON text and put into the
            # batch as they are (`_post_batch`), neither parsed nor encoded again (at 100,000 customers, half a
            # million orders: about 7 s of the worker's time).
            columns = [sa.cast(c, sa.Text).label(c.name) if c.name == "body" else c for c in columns]
        with unit_of_work(engine or self.engine) as session:
            # Plain rows, whose attributes are the entry's: read only, and several times cheaper than ORM objects.
            return cast(list[OutboxEntry], session.connection().execute(sa.select(*columns).where(
                col(OutboxEntry.shop_id) == self.lease.shop_id, OUTBOX_PENDING,
                col(OutboxEntry.target) == target, col(OutboxEntry.id) > after,
                sa.or_(col(OutboxEntry.next_attempt_at).is_(None), col(OutboxEntry.next_attempt_at) <= now),
                ~waiting)
                .order_by(col(OutboxEntry.id)).limit(self._events_page)).all())

    def _event_chunks(self, rows: Sequence[OutboxEntry]) -> list[list[OutboxEntry]]:
        chunks: list[list[OutboxEntry]] = []
        current: list[OutboxEntry] = []
        size = 20
        for entry in rows:
            body: Any = entry.body
            entry_size = len(body.encode() if isinstance(body, str) else jsontext.dumpb(body)) + 1
            if current and (len(current) >= self.policy.batch_max_events
                            or size + entry_size > self.policy.batch_max_bytes):
                chunks.append(current)
                current, size = [], 20
            current.append(entry)
            size += entry_size
        if current:
            chunks.append(current)
        return chunks

    def _send_one(self, entry: OutboxEntry) -> int:
        try:
            if entry.target == "order":
                self._send("orders", lambda: self.client.create_order(entry.body))
            else:
                self._send("events", lambda: self.client.send_event(entry.body))
        except BrevoAuthFailed as exc:
            self._pause(exc)
        except BrevoRetriable as exc:
            self._reschedule_events([entry], exc)
            return 0
        except BrevoRejected as exc:
            self._settle_events(delivered=[], dead=[(entry, str(exc))])
            return 0
        self._settle_events(delivered=[entry], dead=[])
        return 1

    def _send_batches(self, chunks: Sequence[list[OutboxEntry]]) -> int:
        """Each chunk sent as `_send_batch` sends it, in turn, with one overlap: once Brevo has answered a chunk,
        the next one is on its way while that answer is written (its rows marked delivered), so that Brevo's time
        on one batch and the database's on the one before pass side by side. One chunk is in flight at a time,
        and only once Brevo has answered the one before. Should writing an answer fail (the lease lost, the
        database gone), the chunk then in flight stays pending, to go again (as when the process dies between
        Brevo's answer and the commit: at least once)."""
        if len(chunks) < 2:
            return sum(self._send_batch(chunk) for chunk in chunks)
        delivered = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="brevo-batches") as sending:
            flight = sending.submit(self._post_batch, chunks[0])
            for i, chunk in enumerate(chunks):
                try:
                    reply: Reply | None = flight.result()
                except (BrevoAuthFailed, BrevoRetriable, BrevoRejected) as exc:
                    delivered += self._batch_failed(chunk, exc)
                    reply = None
                if i + 1 < len(chunks):
                    flight = sending.submit(self._post_batch, chunks[i + 1])
                if reply is not None:
                    try:
                        delivered += self._batch_answered(chunk, reply)
                    except BaseException:
                        flight.cancel()  # not sent if it has not started yet
                        raise
        return delivered

    def _send_batch(self, chunk: list[OutboxEntry]) -> int:
        try:
            reply = self._post_batch(chunk)
        except (BrevoAuthFailed, BrevoRetriable, BrevoRejected) as exc:
            return self._batch_failed(chunk, exc)
        return self._batch_answered(chunk, reply)

    def _post_batch(self, chunk: list[OutboxEntry]) -> Reply:
        bodies = [_sendable(e.body) for e in chunk]
        if chunk[0].target in ("order", HISTORY_ORDER):
            # Live orders say `historical: false` so that Brevo's automations see them; history does not.
            history = chunk[0].target == HISTORY_ORDER
            return self._send("other", lambda: self.client.create_orders(bodies, historical=history))
        return self._send("other", lambda: self.client.send_events_batch(bodies))

    def _batch_failed(self, chunk: list[OutboxEntry], exc: Exception) -> int:
        if isinstance(exc, BrevoAuthFailed):
            self._pause(exc)
        if isinstance(exc, BrevoRetriable):
            self._reschedule_events(chunk, exc)
            return 0
        if chunk[0].target == HISTORY_ORDER:
            # Refused as a whole: halve it until the bad order stands alone (a single call would be live).
            if len(chunk) == 1:
                self._settle_events(delivered=[], dead=[(chunk[0], str(exc))])
                return 0
            half = len(chunk) // 2
            return self._send_batch(chunk[:half]) + self._send_batch(chunk[half:])
        # The batch was refused as a whole: isolate the bad events with single calls.
        return sum(self._send_one(entry) for entry in chunk)

    def _batch_answered(self, chunk: list[OutboxEntry], reply: Reply) -> int:
        failed = _failed_indexes(reply)
        dead = [(chunk[i], reason) for i, reason in failed.items() if 0 <= i < len(chunk)]
        delivered = [e for i, e in enumerate(chunk) if i not in failed]
        self._settle_events(delivered=delivered, dead=dead)
        return len(delivered)

    def _settle_events(self, *, delivered: Sequence[OutboxEntry], dead: Sequence[tuple[OutboxEntry, str]]) -> None:
        now = self.clock.now()
        with unit_of_work(self.engine) as session:
            for chunk in chunked(e.id for e in delivered):
                session.execute(sa.update(OutboxEntry).where(one_of(col(OutboxEntry.id), chunk, session))
                                .values(status="delivered", delivered_at=now, last_error=None)
                                .execution_options(synchronize_session=False))
            for entry, reason in dead:
                session.execute(sa.update(OutboxEntry).where(col(OutboxEntry.id) == entry.id)
                                .values(status="dead", last_error=reason[:2000]))
                session.add(DeadLetter(shop_id=entry.shop_id, shop_domain=self.lease.domain, source="event",
                                       reference=entry.idempotency_key, topic=entry.event_name, reason=reason,
                                       payload=_text(entry.body), created_at=now))
            if delivered:
                session.execute(sa.update(Shop).where(col(Shop.id) == self.lease.shop_id).values(last_push_at=now))
            fence(session, self.lease, now=now, seconds=self.policy.lease_seconds)

    def _reschedule_events(self, entries: Sequence[OutboxEntry], exc: BrevoRetriable) -> None:
        table = OutboxEntry.__table__  # type: ignore[attr-defined]
        statement = sa.update(table).where(table.c.id == sa.bindparam("b_id")).values(
            attempts=sa.bindparam("b_attempts"), last_error=str(exc)[:2000],
            next_attempt_at=sa.bindparam("b_next", type_=table.c.next_attempt_at.type))
        rows = [{"b_id": e.id, "b_attempts": e.attempts + 1, "b_next": self._backoff(e.attempts + 1, exc)}
                for e in entries]
        with unit_of_work(self.engine) as session:
            if rows:
                session.connection().execute(statement, rows)
            fence(session, self.lease, now=self.clock.now(), seconds=self.policy.lease_seconds)

    # --- the catalogue (Brevo ecommerce products and categories) -------------------------------

    def push_catalog(self, shop_domain: str, *, batch_max: int = 100) -> int:
        """Products changed since Brevo last heard of them, with their categories. Returns how many went out."""
        with unit_of_work(self.engine) as session:
            rows = session.execute(sa.select(Product).where(
                col(Product.shop_id) == self.lease.shop_id, col(Product.brevo_hash).is_(None))
                .order_by(col(Product.product_id)).limit(batch_max)).scalars().all()
        if not rows:
            return 0
        products = [CatalogProduct(product_id=p.product_id, title=p.title, handle=p.handle,
                                   product_type=p.product_type, vendor=p.vendor, image_url=p.image_url,
                                   collections=tuple(p.collections or ()), deleted=p.deleted) for p in rows]
        bodies = [product_body(p, shop_domain) for p in products]
        other_left = self.client.pacer.remaining("other")
        try:
            if len(rows) > 2 and (other_left is None or other_left > self.policy.other_reserve + 1):
                categories = {cid: category_body(cid, name, shop_domain) for p in products
                              for cid, name in categories_of(p)}
                if categories:
                    self._send("other", lambda: self.client.upsert_categories(list(categories.values())))
                self._send("other", lambda: self.client.upsert_products(bodies))
                self._mark_products(rows, bodies)
                return len(rows)
            sent = 0
            for row, body in zip(rows, bodies, strict=True):
                try:
                    self._send("products", lambda b=body: self.client.upsert_product(b))  # type: ignore[misc]
                except BrevoRejected as exc:
                    self._dead_product(row, body, str(exc))
                    continue
                self._mark_products([row], [body])
                sent += 1
            return sent
        except BrevoAuthFailed as exc:
            self._pause(exc)
        except BrevoRetriable:
            return 0  # the products stay due; the next pass of this shop tries again
        except BrevoRejected:
            # A batch refused as a whole: find the bad product with single calls next time round.
            for row, body in zip(rows, bodies, strict=True):
                try:
                    self._send("products", lambda b=body: self.client.upsert_product(b))  # type: ignore[misc]
                except BrevoRejected as exc:
                    self._dead_product(row, body, str(exc))
                except (BrevoRetriable, BrevoAuthFailed):
                    return 0
                else:
                    self._mark_products([row], [body])
            return len(rows)
        return 0

    def _mark_products(self, rows: Sequence[Product], bodies: Sequence[dict[str, Any]]) -> None:
        with unit_of_work(self.engine) as session:
            for row, body in zip(rows, bodies, strict=True):
                # Only if the product did not change meanwhile (a newer webhook cleared the hash again).
                session.execute(sa.update(Product).where(
                    col(Product.shop_id) == row.shop_id, col(Product.product_id) == row.product_id,
                    col(Product.brevo_hash).is_(None), col(Product.updated_at_src) == row.updated_at_src)
                    .values(brevo_hash=catalog_hash(body)))
            fence(session, self.lease, now=self.clock.now(), seconds=self.policy.lease_seconds)

    def _dead_product(self, row: Product, body: dict[str, Any], reason: str) -> None:
        with unit_of_work(self.engine) as session:
            session.execute(sa.update(Product).where(col(Product.shop_id) == row.shop_id,
                                                     col(Product.product_id) == row.product_id)
                            .values(brevo_hash=f"refused:{catalog_hash(body)[:50]}"))
            session.add(DeadLetter(shop_id=row.shop_id, shop_domain=self.lease.domain, source="product",
                                   reference=str(row.product_id), reason=reason, payload=json.dumps(body),
                                   created_at=self.clock.now()))
            fence(session, self.lease, now=self.clock.now(), seconds=self.policy.lease_seconds)


def _needs_single_call(body: dict[str, Any], sent: dict[str, Any] | None, brevo_email: str | None,
                       one_by_one: bool) -> bool:
    """What an import cannot do goes one by one: lift a blacklist (an import can only set one, for all its
    rows), change an email, add to a second list or leave one, or send a contact with neither an email nor a
    phone to name it by (Brevo imports a row by its email, else its SMS number)."""
    left_lists = set((sent or {}).get("listIds") or []) - set(body.get("listIds") or [])
    return (one_by_one or body.get("emailBlacklisted") is False or body.get("smsBlacklisted") is False
            or not (body.get("email") or (body.get("attributes") or {}).get("SMS"))
            or "listIds" in body
            or bool(left_lists)
            or (brevo_email is not None and brevo_email != body.get("email")))


def _import_row(body: dict[str, Any]) -> dict[str, Any]:
    attributes = dict(body.get("attributes", {}))
    if body.get("ext_id"):
        attributes["EXT_ID"] = body["ext_id"]
    row: dict[str, Any] = {"attributes": attributes}
    if body.get("email"):
        row["email"] = body["email"]
    return row


def _sendable(body: Any) -> Any:
    """An outbox body as a batch carries it: one read as JSON text (history's orders) goes in as it is."""
    return jsontext.embedded(body) if isinstance(body, str) else body


def _text(body: Any) -> str:
    """An outbox body as JSON text (for a dead letter), whether it was read as a value or as its text."""
    return body if isinstance(body, str) else json.dumps(body)


def _failed_indexes(reply: Reply) -> dict[int, str]:
    """A 207 names the failed events by index; the rest of the batch was accepted."""
    body = reply.body if isinstance(reply.body, dict) else {}
    failed: dict[int, str] = {}
    for error in body.get("errors") or []:
        if not isinstance(error, dict):
            continue
        indexes = error.get("eventIndex")
        for index in indexes if isinstance(indexes, list) else [indexes]:
            if isinstance(index, int):
                failed[index] = f"Brevo refused this event in a batch: {error.get('message', 'no reason given')}"
    return failed


def due(value: datetime | None, now: datetime) -> bool:
    value = as_utc(value)
    return value is None or value <= now
