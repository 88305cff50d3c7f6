"""A shop's history read from Shopify with bulk queries and handed to the applier as history.

Per resource (customers, products, orders, abandoned checkouts), in three resumable steps:
1. **Run**: one `bulkOperationRunQuery` (the resources run side by side: Shopify allows five per shop), then its
   status is polled until the file is ready. The operation id is saved first, so a restarted backfill waits for
   the same operation instead of starting another.
2. **Stage**: the JSONL file is streamed (never held whole) and its lines stored as they come, with the count
   of lines stored, in the same commit. Shopify writes nested rows (an order's line items) as lines of their own
   that point at their parent with `__parentId`, not necessarily next to it, so objects are reassembled only once
   the whole file is staged. A line cut off by a broken download is refused with its number; the next run
   reads the file again from the first line not stored.
3. **Queue**: each object, with its nested rows, becomes the webhook payload its topic carries
   (`mappings.shopify_graphql`) and an inbox row with source `backfill`: the worker applies it through the same
   parsers and handlers as a webhook, as history (no events: history fires no automation), last write wins on
   `updated_at`, and the row's id (resource, object, `updatedAt`) makes a replay a no-op. Every file is staged
   before the first object is queued, so the history reaches the inbox without a pause between resources.

A bulk operation that fails or expires, or a file that is gone, is reported with Shopify's reason and started
again on the next run; a revoked token pauses the shop.

On PostgreSQL the staged lines are an UNLOGGED table (migration 0016): written without the write-ahead log, a
file costs the server a fraction of the work, and a crash of the database server empties the table. So a file's
first chunk comes with a marker line (`MARKER_LINE`), and every later chunk staged or queued checks, in its own
commit, that the marker is still there. When it is gone, the run stops with that reason, and the next run reads
the history again with a new bulk query (not the old file: it would bring back customers erased since), queuing
again what was queued (as no-ops).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from connector import jsontext
from connector.clock import Clock, SystemClock, as_utc
from connector.database import insert_new, insert_rows, refresh_statistics, unit_of_work
from connector.models import Backfill, BackfillRow, InboxEntry, Shop
from connector.shopify import (
    BulkBusy,
    BulkFileGone,
    BulkTimedOut,
    ShopifyAuthFailed,
    ShopifyClient,
    ShopifyError,
    ShopifyRejected,
)
from mappings.shopify_graphql import RESOURCES, Resource, legacy_id, to_payload
from sync.push import ShopPaused, pause_shop

log = logging.getLogger("connector.backfill")

STAGE_CHUNK = 10_000  # lines per commit while staging
QUEUE_CHUNK = 2000  # objects per commit while queuing
# Line 0 of a staged file: no object (its parent "" matches no parent and no `parent IS NULL`), only the sign
# that the lines staged with it are still there (see the module's docstring).
MARKER_LINE = {"line": 0, "parent": "", "body": ""}
ORDER = ("customers", "products", "orders", "checkouts")  # buyers before their orders, products before lines


SIXTY_DAYS = ("only the last 60 days of orders were visible: the app was not granted read_all_orders "
              "(ask Shopify for it, then run the backfill of orders again with --restart)")


class BackfillError(Exception):
    """This resource's backfill stopped; the message says why. Running it again resumes."""


class BulkOperationFailed(BackfillError):
    """Shopify's bulk operation failed, expired or never finished: the next run starts a new one."""


@dataclass
class Progress:
    resource: str
    step: str  # waiting | staging | queuing | done | failed
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class ResourceResult:
    resource: str
    status: str
    lines_read: int
    queued: int
    error: str | None
    notice: str | None = None


def _shop(engine: Engine, domain: str) -> Shop:
    with unit_of_work(engine) as session:
        shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
        if shop is None:
            raise BackfillError(f"no shop {domain}: add it with `connector shops add` first")
        session.expunge(shop)
    return shop


def _search(since: datetime | None) -> str | None:
    return f"created_at:>='{since.strftime('%Y-%m-%dT%H:%M:%SZ')}'" if since else None


def run_backfill(engine: Engine, client: ShopifyClient, domain: str, *, resources: Sequence[str] = ORDER,
                 since: datetime | None = None, restart: bool = False, clock: Clock | None = None,
                 progress: ProgressFn | None = None, poll_seconds: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, timeout_seconds: float = 24 * 3600
                 ) -> list[ResourceResult]:
    """Backfill these resources of the shop; returns what happened to each. Safe to run again at any point.

    Shopify refusing the access token pauses the shop (its other work stops too) and raises BackfillError."""
    try:
        return _run(engine, client, domain, resources=resources, since=since, restart=restart, clock=clock,
                    progress=progress, poll_seconds=poll_seconds, sleep=sleep, timeout_seconds=timeout_seconds)
    except ShopifyAuthFailed as exc:
        shop = _shop(engine, domain)
        with contextlib.suppress(ShopPaused):  # pausing raises it, to stop the caller's work: ours stops here
            pause_shop(engine, shop.id or 0, exc)
        raise BackfillError(f"{exc}; the shop is paused until the token is renewed") from None


def _run(engine: Engine, client: ShopifyClient, domain: str, *, resources: Sequence[str], since: datetime | None,
         restart: bool, clock: Clock | None, progress: ProgressFn | None, poll_seconds: float,
         sleep: Callable[[float], None], timeout_seconds: float) -> list[ResourceResult]:
    clock = clock or SystemClock()
    unknown = [r for r in resources if r not in RESOURCES]
    if unknown:
        raise BackfillError(f"unknown resource {unknown[0]!r}: choose from {', '.join(ORDER)}")
    shop = _shop(engine, domain)
    shop_id = shop.id or 0
    wanted = [r for r in ORDER if r in resources]
    runs = {r: _prepare(engine, shop_id, r, since=since, restart=restart, now=clock.now()) for r in wanted}
    if "orders" in runs:
        try:
            scopes: set[str] | None = client.granted_scopes()
        except ShopifyRejected:
            scopes = None  # unknown: nothing to say
        runs["orders"] = _save(engine, runs["orders"],
                               notice=SIXTY_DAYS if scopes is not None and "read_all_orders" not in scopes else None)
    report = progress or (lambda _: None)
    results: dict[str, ResourceResult] = {}
    # Start every operation first (they run side by side in Shopify), then take the files one by one.
    for name in wanted:
        try:
            _start(engine, client, runs[name], RESOURCES[name], sleep=sleep)
        except ShopifyAuthFailed:
            raise
        except (BackfillError, ShopifyError) as exc:
            results[name] = _failed(engine, runs[name], exc, clock.now())
            report(Progress(name, "failed", 0, 0))
    try:
        _stage_and_queue(engine, client, domain, runs, wanted, results, report, clock=clock,
                         poll_seconds=poll_seconds, sleep=sleep, timeout_seconds=timeout_seconds)
    finally:  # it queues nothing more: workers may build the buyers it brought
        _stopped_queuing(engine, [run.id for run in runs.values() if run.id is not None])
    return [results[name] for name in wanted]


def _stopped_queuing(engine: Engine, ids: list[int]) -> None:
    """These backfills queue nothing more (see `Backfill.queued_at`)."""
    try:
        with unit_of_work(engine) as session:
            session.execute(sa.update(Backfill).where(col(Backfill.id).in_(ids)).values(queued_at=None))
    except sa.exc.SQLAlchemyError:  # the database is what stopped it: its own error is the one to see
        log.warning("could not record that the backfill stopped queuing; workers wait a minute for it",
                    exc_info=True)


def _stage_and_queue(engine: Engine, client: ShopifyClient, domain: str, runs: dict[str, Backfill],
                     wanted: list[str], results: dict[str, ResourceResult], report: ProgressFn, *, clock: Clock,
                     poll_seconds: float, sleep: Callable[[float], None], timeout_seconds: float) -> None:
    """Every file is staged before any object is queued, so that the history reaches the inbox in one run, with
    no pause between two resources: a worker applying it meanwhile would take such a pause for the end of the
    history, and build and send every buyer it has so far (customers without their orders) once too often."""
    for step in ("stage", "queue"):
        if step == "queue":  # the files just staged: their lines are taken by index
            refresh_statistics(engine, BackfillRow.__table__)  # type: ignore[attr-defined]
        for name in wanted:
            if name in results:
                continue
            run = runs[name]
            try:
                if step == "stage":
                    if _staged_lines_lost(engine, run):
                        run = _read_again(engine, client, run, RESOURCES[name], sleep=sleep)
                    if run.status == "started":
                        run = _wait(engine, client, run, report, poll_seconds=poll_seconds, sleep=sleep,
                                    timeout_seconds=timeout_seconds, clock=clock)
                    if run.status == "staging":
                        run = _stage(engine, client, run, report)
                else:
                    if run.status == "queuing":
                        run = _queue(engine, run, RESOURCES[name], domain, report, clock=clock)
                    results[name] = ResourceResult(name, run.status, run.staged, run.queued, None, run.notice)
                    report(Progress(name, "done", run.queued, run.queued))
            except ShopifyAuthFailed:
                raise
            except (BackfillError, ShopifyError) as exc:
                results[name] = _failed(engine, run, exc, clock.now())
                report(Progress(name, "failed", run.staged, run.lines))
            runs[name] = run


def _prepare(engine: Engine, shop_id: int, resource: str, *, since: datetime | None, restart: bool,
             now: datetime) -> Backfill:
    """The resource's backfill row: a finished, failed or restarted one begins again; an unfinished one resumes."""
    with unit_of_work(engine) as session:
        run = session.execute(sa.select(Backfill).where(col(Backfill.shop_id) == shop_id,
                                                        col(Backfill.resource) == resource)).scalar_one_or_none()
        if run is None:
            run = Backfill(shop_id=shop_id, resource=resource)
            session.add(run)
        elif run.status not in ("done", "failed") and not restart and as_utc(run.since) == as_utc(since):
            session.flush()
            session.expunge(run)
            return run
        elif run.id is not None:
            session.execute(sa.delete(BackfillRow).where(col(BackfillRow.backfill_id) == run.id))
        run.status, run.since, run.operation_id, run.url, run.error = "started", since, None, None, None
        run.lines = run.staged = run.queued = run.last_queued_line = 0
        run.started_at, run.finished_at = now, None
        session.flush()
        session.expunge(run)
    return run


def _save(engine: Engine, run: Backfill, **values: object) -> Backfill:
    with unit_of_work(engine) as session:
        session.execute(sa.update(Backfill).where(col(Backfill.id) == run.id).values(**values))
    for name, value in values.items():
        setattr(run, name, value)
    return run


def _failed(engine: Engine, run: Backfill, exc: Exception, now: datetime) -> ResourceResult:
    """Recorded with the reason; the staged lines and the count of queued objects are kept for the next run."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, (BulkFileGone, BulkOperationFailed)):
        _save(engine, run, status="failed", error=reason, finished_at=now)  # the query must run again
    else:
        _save(engine, run, error=reason)  # resumable as it stands
    return ResourceResult(run.resource, "failed", run.staged, run.queued, reason)


def _start(engine: Engine, client: ShopifyClient, run: Backfill, resource: Resource, *,
           sleep: Callable[[float], None]) -> None:
    if run.status != "started" or run.operation_id:
        return
    query = resource.bulk_query(_search(run.since))
    for _ in range(60):  # the shop's bulk slots may be taken (by us or another app): wait for one
        try:
            _save(engine, run, operation_id=client.run_bulk_query(query), error=None)
            return
        except BulkBusy as exc:
            sleep(exc.retry_after or 5.0)
    raise BackfillError("Shopify kept refusing a new bulk operation: the shop's bulk query slots stay busy")


def _wait(engine: Engine, client: ShopifyClient, run: Backfill, report: ProgressFn, *, poll_seconds: float,
          sleep: Callable[[float], None], timeout_seconds: float, clock: Clock) -> Backfill:
    assert run.operation_id is not None
    try:
        status = client.wait_bulk(run.operation_id, deadline=time.monotonic() + timeout_seconds,
                                  poll_seconds=poll_seconds, sleep=sleep, waiting=lambda seen: report(
                                      Progress(run.resource, "waiting", seen.objects if seen else 0, 0)))
    except BulkTimedOut as exc:
        raise BulkOperationFailed(str(exc)) from exc
    if status.status != "COMPLETED":
        raise BulkOperationFailed(f"Shopify's bulk operation {status.id} ended {status.status}"
                            + (f" ({status.error_code})" if status.error_code else "") + ": it runs again next time")
    if not status.url:  # nothing matched: an empty history
        return _save(engine, run, status="queuing", lines=0)
    return _save(engine, run, status="staging", url=status.url, lines=status.objects)


class StagedLinesLost(BackfillError):
    """The database lost the staged lines (PostgreSQL empties its unlogged table when it recovers from a crash)."""

    def __init__(self) -> None:
        super().__init__("the staged lines of the bulk file were lost (the database restarted): "
                         "the next run reads the history again with a new bulk query")


def _marker_kept(session: Session, run: Backfill) -> bool:
    return session.execute(sa.select(col(BackfillRow.line)).where(
        col(BackfillRow.backfill_id) == run.id, col(BackfillRow.line) == MARKER_LINE["line"])).first() is not None


def _staged_lines_lost(engine: Engine, run: Backfill) -> bool:
    """Whether this unfinished run had staged lines that are gone (see the module's docstring)."""
    if run.status not in ("staging", "queuing") or not run.staged or run.id is None:
        return False
    with unit_of_work(engine) as session:
        return not _marker_kept(session, run)


def _read_again(engine: Engine, client: ShopifyClient, run: Backfill, resource: Resource, *,
                sleep: Callable[[float], None]) -> Backfill:
    """A new bulk query for the resource, from the first line: what Shopify holds now."""
    log.warning("backfill of %s: its %d staged lines were lost (the database restarted); reading the history "
                "again with a new bulk query", run.resource, run.staged)
    # What is left of the old lines goes when the new file's staging starts from its first line (`_stage`).
    run = _save(engine, run, status="started", operation_id=None, url=None, error=None, lines=0, staged=0,
                queued=0, last_queued_line=0)
    _start(engine, client, run, resource, sleep=sleep)
    return run


def _stage(engine: Engine, client: ShopifyClient, run: Backfill, report: ProgressFn) -> Backfill:
    assert run.url is not None and run.id is not None
    fresh = not run.staged
    if fresh:  # leftovers (a marker committed alone, lines of a lost file) would collide with the new lines
        with unit_of_work(engine) as session:
            session.execute(sa.delete(BackfillRow).where(col(BackfillRow.backfill_id) == run.id))
    # The marker goes in with the file's first chunk, in the same commit; each later chunk checks it is there.
    batch: list[dict[str, object]] = [{"backfill_id": run.id, **MARKER_LINE}] if fresh else []
    staged = run.staged

    def flush() -> None:
        nonlocal batch, fresh
        with unit_of_work(engine) as session:
            if not fresh and not _marker_kept(session, run):
                raise StagedLinesLost()
            fresh = False
            insert_rows(session, BackfillRow.__table__, batch)  # type: ignore[attr-defined]
            session.execute(sa.update(Backfill).where(col(Backfill.id) == run.id).values(staged=staged))
        run.staged, batch = staged, []
        report(Progress(run.resource, "staging", staged, run.lines))

    for number, raw in client.bulk_lines(run.url, skip=run.staged):
        if not raw.endswith(b"\n"):
            flush()
            raise BackfillError(f"line {number} of the bulk file is cut off (the download broke): "
                                f"{number - 1} lines are kept, the next run reads on from line {number}")
        try:
            obj = jsontext.loads(raw)
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
                raise ValueError("not an object with an id")
        except ValueError as exc:
            flush()
            raise BackfillError(f"line {number} of the bulk file is unreadable ({exc})") from None
        parent = obj.get("__parentId")
        batch.append({"backfill_id": run.id, "line": number, "parent": parent if isinstance(parent, str) else None,
                      "body": raw.decode().rstrip("\n")})
        staged = number
        if len(batch) >= STAGE_CHUNK:
            flush()
    flush()
    return _save(engine, run, status="queuing", lines=max(run.lines, staged))


def _queue(engine: Engine, run: Backfill, resource: Resource, domain: str, report: ProgressFn, *,
           clock: Clock) -> Backfill:
    """Reassemble each object with its nested rows and queue it for the applier, a chunk per commit."""
    assert run.id is not None
    now = clock.now()
    staged: sa.Table = BackfillRow.__table__  # type: ignore[attr-defined]
    left = _left(engine, run)
    while True:
        with unit_of_work(engine) as session:
            if run.staged and not _marker_kept(session, run):  # else what is gone would look like the end
                raise StagedLinesLost()
            # Ordered by (parent, line), the index's order: every parent is NULL, so that is line order, and
            # PostgreSQL walks the index from where it stopped (ordered by line alone, it read and sorted every
            # parent line left in the file for each chunk).
            parents = session.execute(sa.select(col(BackfillRow.line), col(BackfillRow.body)).where(
                col(BackfillRow.backfill_id) == run.id, col(BackfillRow.parent).is_(None),
                col(BackfillRow.line) > run.last_queued_line)
                .order_by(col(BackfillRow.parent), col(BackfillRow.line))
                .limit(QUEUE_CHUNK)).tuples().all()
            if not parents:  # what is left: lines whose parent was not in the file
                session.execute(sa.delete(BackfillRow).where(col(BackfillRow.backfill_id) == run.id))
                session.execute(sa.update(Backfill).where(col(Backfill.id) == run.id).values(
                    status="done", finished_at=now, error=None))
                run.status, run.finished_at, run.error = "done", now, None
                return run
            nodes = [jsontext.loads(body) for _, body in parents]
            children: dict[str, list[dict[str, Any]]] = {str(node["id"]): [] for node in nodes}
            if resource.child_type:
                # Taken (read and deleted in one statement) by their parents' ids, and sorted here, not in SQL:
                # ordered by line, SQLite would walk every staged line of the file by its primary key for each
                # chunk (quadratic in the file) instead of taking these parents' index.
                found = sorted(session.execute(sa.delete(staged).where(
                    staged.c.backfill_id == run.id, staged.c.parent.in_(list(children)))
                    .returning(staged.c.line, staged.c.body)).tuples())
                for _, body in found:
                    child = jsontext.loads(body)
                    children[str(child["__parentId"])].append(child)
            rows = list(history_rows(resource, domain, ((node, children.get(str(node["id"]), [])) for node in nodes),
                                     "backfill", now))
            insert_new(session, InboxEntry, rows, ["shop_domain", "event_id"])  # a replay is a no-op
            last = parents[-1][0]
            # The chunk's lines go with it, while their pages are in the cache (the inbox rows written next
            # reuse them), instead of in one sweep at the end that reads the whole staged file back.
            session.execute(sa.delete(staged).where(staged.c.backfill_id == run.id, staged.c.parent.is_(None),
                                                    staged.c.line <= last))
            queued = run.queued + len(nodes)
            session.execute(sa.update(Backfill).where(col(Backfill.id) == run.id).values(
                last_queued_line=last, queued=queued, queued_at=clock.now()))
        run.last_queued_line, run.queued = last, queued
        left -= len(nodes)
        report(Progress(run.resource, "queuing", queued, queued + left))


def _left(engine: Engine, run: Backfill) -> int:
    with unit_of_work(engine) as session:
        return int(session.execute(sa.select(sa.func.count()).select_from(BackfillRow).where(
            col(BackfillRow.backfill_id) == run.id, col(BackfillRow.parent).is_(None),
            col(BackfillRow.line) > run.last_queued_line)).scalar_one())


def history_rows(resource: Resource, domain: str, objects: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]],
                 source: str, now: datetime) -> Iterable[dict[str, object]]:
    """Inbox rows of objects read from Shopify (each with its nested rows), as their webhook topic's payload.
    The id is the object's version (resource, id, `updatedAt`), whoever read it: a backfill and a poll that
    see the same version queue it once."""
    for node, children in objects:
        payload = to_payload(resource.name, node, children)
        ident = legacy_id(node.get("id"))
        yield {"shop_domain": domain, "event_id": f"history:{resource.name}:{ident}:{node.get('updatedAt') or ''}",
               "topic": resource.topic, "source": source, "body": jsontext.dumps(payload),
               "status": "pending", "received_at": now}
