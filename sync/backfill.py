"""A shop's history read from Shopify with bulk queries, staged, and applied by the workers as history.

Per resource (customers, products, orders, abandoned checkouts), in three resumable steps:
1. **Run**: one `bulkOperationRunQuery` (the resources run side by side: Shopify allows five per shop), then its
   status is polled until the file is ready. The operation id is saved first, so a restarted backfill waits for
   the same operation instead of starting another.
2. **Stage**: the JSONL file is streamed (never held whole) and its lines stored as they come, with the count
   of lines stored, in the same commit. Shopify writes nested rows (an order's line items) as lines of their own
   that point at their parent with `__parentId`, not necessarily next to it, so objects are reassembled only once
   the whole file is staged. A nested line whose parent came earlier in the same commit's chunk is stored in its
   parent's row (after the parent's line, one line each), the others (a parent staged in an earlier chunk) in a
   row of their own that names their parent: an order and its line items are then one row to write, read and
   delete instead of three on average. A line cut off by a broken download is refused with its number; the next run
   reads the file again from the first line not stored. That is where `run_backfill` (`connector backfill`) stops.
3. **Apply**: a worker holding the shop's lease takes the staged objects a chunk at a time (`take_history`),
   each with its nested rows, as the webhook payload its topic carries (`mappings.shopify_graphql`), and applies
   them through the same parsers and handlers as a webhook, as history (no events: history fires no automation),
   last write wins on `updated_at`. The chunk's mirror rows, the removal of its staged lines and the checkpoint
   (the last line applied) commit together, so a killed worker resumes at the next chunk, and nothing is applied
   twice. Resources are applied in `ORDER` (buyers before their orders); while the backfill still runs, those
   staged before the first file still being read (customers while the orders' file is staged: on two cores the
   worker applies them meanwhile). No buyer is built before the backfill has stopped and every file is applied
   (`Worker._history_queued`): it would be built again with each slice of its history.
   While it applies a chunk, a helper process reads the next one (`HistoryReader`).

A bulk operation that fails or expires, or a file that is gone, is reported with Shopify's reason and started
again on the next run; a revoked token pauses the shop. An object no handler can read is set aside as a failed
inbox delivery with a dead letter, as a webhook would be.

On PostgreSQL the staged lines are an UNLOGGED table (migration 0016): written without the write-ahead log, a
file costs the server a fraction of the work, and a crash of the database server empties the table. So a file's
first chunk comes with a marker line (`MARKER_LINE`), and every later chunk staged or applied checks, in its own
commit, that the marker is still there. When it is gone, the resource's backfill stops with that reason, and the
next run reads the history again with a new bulk query (not the old file: it would bring back customers erased
since), applying again what was applied (last write wins: the same versions change nothing).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from connector import jsontext
from connector.clock import Clock, SystemClock, as_utc
from connector.database import WalCheckpointer, insert_rows, one_of, refresh_statistics, unit_of_work
from connector.models import Backfill, BackfillRow, Shop
from connector.shopify import (
    BulkBusy,
    BulkFileGone,
    BulkTimedOut,
    ShopifyAuthFailed,
    ShopifyClient,
    ShopifyError,
    ShopifyRejected,
)
from mappings.shopify_graphql import RESOURCES, Resource, assemble, history_id, parse_staged, to_payload
from sync.apply import TOPICS, Prepared, prepare
from sync.helper import Helper, helper_engine
from sync.push import ShopPaused, pause_shop

log = logging.getLogger("connector.backfill")

STAGE_CHUNK = 10_000  # lines per commit while staging, at least (a chunk ends before an object's line)
# A chunk whose objects' nested lines go on and on (a parent with tens of thousands of them) ends anyway at this
# many lines: its parent's later nested lines are then staged apart, as when they come after the chunk's end.
STAGE_CHUNK_MOST = 4 * STAGE_CHUNK
HISTORY_CHUNK = 1000  # objects a worker applies per unit of work
# Chunks the helper process reads ahead of the one the worker applies: with one, each side waited for the other
# in turn whenever a chunk took one of them longer than the other (at 100,000 customers on two cores, the worker
# and the helper were each busy about 80% of the time).
READ_AHEAD = 2
# A running backfill says so (`Backfill.queued_at`) at least this often; one silent for `SILENCE` was killed.
HEARTBEAT_SECONDS = 5.0
SILENCE = timedelta(seconds=60)
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
    step: str  # waiting | staging | staged | failed
    done: int
    total: int


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class ResourceResult:
    resource: str
    status: str  # staged (the workers apply it) | failed
    lines_read: int
    objects: int  # in the staged file, each with its nested rows: what the workers apply
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
    ids = [run.id for run in runs.values() if run.id is not None]
    report = _beating(engine, ids, progress or (lambda _: None), clock)
    results: dict[str, ResourceResult] = {}
    try:
        # Start every operation first (they run side by side in Shopify), then take the files one by one.
        for name in wanted:
            try:
                _start(engine, client, runs[name], RESOURCES[name], report, sleep=sleep)
            except ShopifyAuthFailed:
                raise
            except (BackfillError, ShopifyError) as exc:
                results[name] = _failed(engine, runs[name], exc, clock.now())
                report(Progress(name, "failed", 0, 0))
        _stage_all(engine, client, runs, wanted, results, report, clock=clock, poll_seconds=poll_seconds,
                   sleep=sleep, timeout_seconds=timeout_seconds)
    finally:  # it stages nothing more: workers may apply what it staged
        _stopped(engine, ids)
    return [results[name] for name in wanted]


def _beating(engine: Engine, ids: list[int], report: ProgressFn, clock: Clock) -> ProgressFn:
    """`report`, which also records, every few seconds, that these backfills are still running (see
    `Backfill.queued_at`): until the backfill has stopped, workers apply only the files staged before the first
    one still being read (`_applying`), and build none of the shop's buyers."""
    _beat(engine, ids, clock)
    last = time.monotonic()

    def beat(step: Progress) -> None:
        nonlocal last
        if time.monotonic() - last >= HEARTBEAT_SECONDS:
            last = time.monotonic()
            try:
                _beat(engine, ids, clock)
            except sa.exc.SQLAlchemyError:  # a missed beat only makes workers wait: staging goes on
                log.warning("could not record that the backfill still runs", exc_info=True)
        report(step)

    return beat


def _beat(engine: Engine, ids: list[int], clock: Clock) -> None:
    """Marks these backfills as running now, skipping any row a worker holds (it is applying that file, which
    is staged: the beat is not needed there), so that the beat never waits for a worker nor deadlocks with one
    that finishes a file and takes the next (PostgreSQL; SQLite has one writer at a time anyway)."""
    free = (sa.select(col(Backfill.id)).where(col(Backfill.id).in_(ids))
            .with_for_update(skip_locked=True))
    with unit_of_work(engine) as session:
        session.execute(sa.update(Backfill).where(col(Backfill.id).in_(free)).values(queued_at=clock.now()))


def _stopped(engine: Engine, ids: list[int]) -> None:
    """These backfills stage nothing more (see `Backfill.queued_at`). One row at a time, so that a worker that
    holds one run's row and takes the next one's never deadlocks with this."""
    try:
        for id_ in sorted(ids):
            with unit_of_work(engine) as session:
                session.execute(sa.update(Backfill).where(col(Backfill.id) == id_).values(queued_at=None))
    except sa.exc.SQLAlchemyError:  # the database is what stopped it: its own error is the one to see
        log.warning("could not record that the backfill stopped; workers wait a minute before building its buyers",
                    exc_info=True)


def _stage_all(engine: Engine, client: ShopifyClient, runs: dict[str, Backfill], wanted: list[str],
               results: dict[str, ResourceResult], report: ProgressFn, *, clock: Clock, poll_seconds: float,
               sleep: Callable[[float], None], timeout_seconds: float) -> None:
    """Every file is staged, in `ORDER`; the workers apply each once it and the files before it are staged, or
    once the backfill has stopped (`_applying`)."""
    for name in wanted:
        if name in results:
            continue
        run = runs[name]
        try:
            if _staged_lines_lost(engine, run):
                run = _read_again(engine, client, run, RESOURCES[name], report, sleep=sleep)
            if run.status == "started":
                run = _wait(engine, client, run, report, poll_seconds=poll_seconds, sleep=sleep,
                            timeout_seconds=timeout_seconds, clock=clock)
            if run.status == "staging":
                run = _stage(engine, client, run, report)
        except ShopifyAuthFailed:
            raise
        except (BackfillError, ShopifyError) as exc:
            results[name] = _failed(engine, run, exc, clock.now())
            report(Progress(name, "failed", run.staged, run.lines))
        runs[name] = run
    refresh_statistics(engine, BackfillRow.__table__)  # type: ignore[attr-defined]  # workers take them by index
    for name in wanted:
        if name not in results:
            run = runs[name]
            objects = _objects(engine, run)
            results[name] = ResourceResult(name, "staged", run.staged, objects, None, run.notice)
            report(Progress(name, "staged", objects, objects))


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
    """Recorded with the reason; the staged lines are kept for the next run."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, (BulkFileGone, BulkOperationFailed)):
        _save(engine, run, status="failed", error=reason, finished_at=now)  # the query must run again
    else:
        _save(engine, run, error=reason)  # resumable as it stands
    return ResourceResult(run.resource, "failed", run.staged, 0, reason)


def _start(engine: Engine, client: ShopifyClient, run: Backfill, resource: Resource, report: ProgressFn, *,
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
            report(Progress(run.resource, "waiting", 0, 0))  # still running: its heartbeat goes on (`_beating`)
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
        return _save(engine, run, status="staged", lines=0)
    return _save(engine, run, status="staging", url=status.url, lines=status.objects)


class StagedLinesLost(BackfillError):
    """The database lost the staged lines (PostgreSQL empties its unlogged table when it recovers from a crash)."""

    def __init__(self, run_id: int = 0) -> None:
        super().__init__("the staged lines of the bulk file were lost (the database restarted): "
                         "the next run reads the history again with a new bulk query")
        self.run_id = run_id


def _marker_kept(session: Session, run: Backfill) -> bool:
    return session.execute(sa.select(col(BackfillRow.line)).where(
        col(BackfillRow.backfill_id) == run.id, col(BackfillRow.line) == MARKER_LINE["line"])).first() is not None


def _staged_lines_lost(engine: Engine, run: Backfill) -> bool:
    """Whether this unfinished run had staged lines that are gone (see the module's docstring)."""
    if run.status not in ("staging", "staged") or not run.staged or run.id is None:
        return False
    with unit_of_work(engine) as session:
        return not _marker_kept(session, run)


def _read_again(engine: Engine, client: ShopifyClient, run: Backfill, resource: Resource, report: ProgressFn, *,
                sleep: Callable[[float], None]) -> Backfill:
    """A new bulk query for the resource, from the first line: what Shopify holds now."""
    log.warning("backfill of %s: its %d staged lines were lost (the database restarted); reading the history "
                "again with a new bulk query", run.resource, run.staged)
    # What is left of the old lines goes when the new file's staging starts from its first line (`_stage`).
    run = _save(engine, run, status="started", operation_id=None, url=None, error=None, lines=0, staged=0,
                queued=0, last_queued_line=0)
    _start(engine, client, run, resource, report, sleep=sleep)
    return run


def _stage(engine: Engine, client: ShopifyClient, run: Backfill, report: ProgressFn) -> Backfill:
    """The file's lines stored a chunk at a time, from the first not stored yet. On PostgreSQL each chunk is
    written (and committed) in a thread of its own while the next one is read, so that the server's work on it
    overlaps the download and the reading of the lines (20,000 customers' files: staged in 2.6 s instead of
    3.4). SQLite does its writing in this process: the rows are inserted here (from a thread, each row's step
    gave the interpreter up and waited to get it back, and staging took 12% longer), and only the commit, which
    writes the chunk's pages to the log without holding the interpreter, runs in the thread while the next
    chunk is read. One chunk is written at a time, in file order."""
    assert run.url is not None and run.id is not None
    fresh = not run.staged
    if fresh:  # leftovers (a marker committed alone, lines of a lost file) would collide with the new lines
        with unit_of_work(engine) as session:
            session.execute(sa.delete(BackfillRow).where(col(BackfillRow.backfill_id) == run.id))
    # The marker goes in with the file's first chunk, in the same commit; each later chunk checks it is there.
    batch: list[dict[str, object]] = [{"backfill_id": run.id, **MARKER_LINE}] if fresh else []
    objects: dict[str, list[str]] = {}  # the chunk's objects, by id: the lines of each one's row
    lines = 0  # in the chunk
    staged = run.staged
    writing: tuple[Future[None], int] | None = None  # the chunk being written, and the last line in it
    overlap = engine.dialect.name == "postgresql"
    # SQLite: each chunk's pages are copied from the log into the file by a thread of its own (SQLite's own work,
    # on the other core) while the next chunk is read, instead of by the commit of a later chunk (100,000
    # customers' files, with 8 KB pages, three runs each, alternating: staged in 22.6-23.4 s instead of 23.9-25.0).
    checkpointer = None if overlap else WalCheckpointer(engine, interval=0.0)

    def insert(session: Session, rows: list[dict[str, object]], last: int, check_marker: bool) -> None:
        if check_marker and not _marker_kept(session, run):
            raise StagedLinesLost()
        insert_rows(session, BackfillRow.__table__, rows)  # type: ignore[attr-defined]
        session.execute(sa.update(Backfill).where(col(Backfill.id) == run.id).values(staged=last))

    def write(rows: list[dict[str, object]], last: int, check_marker: bool) -> None:  # in the writer thread
        with unit_of_work(engine) as session:
            insert(session, rows, last, check_marker)

    def inserted(rows: list[dict[str, object]], last: int, check_marker: bool) -> contextlib.ExitStack:
        """SQLite: the chunk inserted here, in a unit of work left open: closing what is returned commits it
        (in the writer thread)."""
        with contextlib.ExitStack() as stack:
            insert(stack.enter_context(unit_of_work(engine)), rows, last, check_marker)
            return stack.pop_all()

    def written() -> None:
        """Wait for the chunk being written; it counts as staged once committed."""
        nonlocal writing
        if writing is not None:
            future, last = writing
            writing = None
            future.result()
            if checkpointer is not None:
                checkpointer.written()
            run.staged = last
            report(Progress(run.resource, "staging", last, run.lines))

    def flush() -> None:
        nonlocal batch, fresh, writing, lines
        written()
        for row in batch:  # each object's row: its own line, then the nested lines staged with it
            if isinstance(row["body"], list):
                row["body"] = "\n".join(row["body"])
        objects.clear()
        lines = 0
        if overlap:
            writing = writer.submit(write, batch, staged, not fresh), staged
        else:
            writing = writer.submit(inserted(batch, staged, not fresh).close), staged
        fresh, batch = False, []

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging") as writer:
        try:
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
                body = raw.decode().rstrip("\n")
                if not isinstance(parent, str):
                    if lines >= STAGE_CHUNK:  # the chunk ends before an object, whose nested lines may follow
                        flush()
                    objects[obj["id"]] = [body]
                    batch.append({"backfill_id": run.id, "line": number, "parent": None, "body": objects[obj["id"]]})
                elif (folded := objects.get(parent)) is not None:
                    folded.append(body)
                else:  # its parent is in an earlier chunk (or comes later in the file, or not at all)
                    batch.append({"backfill_id": run.id, "line": number, "parent": parent, "body": body})
                lines += 1
                staged = number
                if lines >= STAGE_CHUNK_MOST:
                    flush()
            flush()
        finally:
            try:
                written()  # whatever stopped the reading, what was read is stored (or its own error is raised)
            finally:
                if checkpointer is not None:
                    checkpointer.close()
    return _save(engine, run, status="staged", lines=max(run.lines, staged))


@dataclass
class HistoryChunk:
    """Staged objects of one resource's backfill, taken by a worker in its unit of work (`take_history`): each
    with its id as history (`history_id`) and either its webhook-shaped payload, for the applier to read, or the
    record its topic's parser already read from it (`HistoryReader`)."""

    resource: Resource
    objects: list[tuple[str, dict[str, Any] | None, Any]]  # (history id, payload, record): one of the two
    prepared: Prepared | None = None  # with records: what the helper made ahead from them


@dataclass(frozen=True)
class ReadAhead:
    """A chunk the helper process read for itself (`read_staged`): its objects, each as `HistoryChunk` holds
    them, what it made ahead from them, their ids and last line, and how many of their nested lines were staged
    apart from them (in rows of their own)."""

    objects: list[tuple[str, dict[str, Any] | None, Any]]
    prepared: Prepared
    parent_ids: list[str]
    last: int
    children: int


def read_staged(run_id: int, resource: Resource, after: int | None, limit: int, shop_domain: str, number: int,
                follows: int | None = None) -> ReadAhead | None:
    """In the helper process: the chunk of the run's staged file after line `after` (at most `limit` objects,
    each with its nested lines), read from the database with the helper's own read-only connection, parsed by its
    topic's parser and prepared for applying (`sync.apply.prepare`); None when no object is left after that line.
    The worker takes it only if the same lines are still there to delete (`take_history`).

    Each read is numbered; one that `follows` another starts where that one ended (the helper runs its reads in
    the order they were handed over), so that the worker can hand over the chunk after a chunk still being read.
    None when the read it follows ended the file, failed or never ran."""
    if follows is not None:
        after = _read_ends.pop(follows, None)
        if after is None:
            return None
    assert after is not None
    with helper_engine().connect() as connection:
        read = _read_staged(connection, run_id, resource, after, limit, shop_domain)
    if read is not None and len(read.parent_ids) == limit:  # more may follow
        for older in [n for n in _read_ends if n < number - 100]:  # of reads whose follower never ran
            del _read_ends[older]
        _read_ends[number] = read.last
    return read


# In the helper process: where each full read ended, by its number, for the read that follows it.
_read_ends: dict[int, int] = {}


def _read_staged(connection: sa.Connection, run_id: int, resource: Resource, after: int, limit: int,
                 shop_domain: str) -> ReadAhead | None:
    staged: sa.Table = BackfillRow.__table__  # type: ignore[attr-defined]
    parents = _parents(connection, run_id, after, limit)
    if not parents:
        return None
    bodies, nested = _unfolded(parents)
    parent_ids = [_object_id(body) for body in bodies]
    apart: list[tuple[int, str]] = []
    if resource.child_type:
        apart = list(connection.execute(sa.select(staged.c.line, staged.c.body).where(
            staged.c.backfill_id == run_id, one_of(staged.c.parent, parent_ids, connection))).tuples())
    objects = parse_staged(resource, TOPICS[resource.topic].parse, bodies, _in_file_order(nested, apart))
    return ReadAhead(objects, prepare([record for _, _, record in objects], shop_domain), parent_ids,
                     parents[-1][0], len(apart))


def _unfolded(rows: Sequence[tuple[int, str]]) -> tuple[list[str], list[tuple[int, int, str]]]:
    """Staged objects' rows (line, body) -> each object's own line, and the nested lines staged in its row, each
    as (its object's line, its place after it, line)."""
    own: list[str] = []
    nested: list[tuple[int, int, str]] = []
    for line, body in rows:
        first, *rest = body.split("\n")
        own.append(first)
        nested.extend((line, place, child) for place, child in enumerate(rest, 1))
    return own, nested


def _in_file_order(nested: list[tuple[int, int, str]], apart: Iterable[tuple[int, str]]) -> list[str]:
    """The nested lines of a chunk's objects, those staged in their objects' rows (`_unfolded`) and those staged
    apart (line, body), each object's in the file's order (the lines of one row follow each other, in the file,
    from its object's line on); objects' lines may interleave (`assemble` groups them by parent)."""
    merged = nested + [(line, 0, body) for line, body in apart]
    if len(merged) > len(nested):  # else already in order: the rows were read in line order
        merged.sort(key=lambda nested_line: nested_line[:2])
    return [body for _, _, body in merged]


def _parents(connection: sa.Connection, run_id: int, after: int, limit: int) -> Sequence[tuple[int, str]]:
    """The next `limit` objects' rows after line `after`: (line, body: the object's line, then the nested lines
    staged with it). Ordered by (parent, line), the index's order: every parent is NULL, so that is line order,
    and PostgreSQL walks the index from where it stopped (ordered by line alone, it read and sorted every parent
    line left in the file for each chunk)."""
    staged: sa.Table = BackfillRow.__table__  # type: ignore[attr-defined]
    return connection.execute(sa.select(staged.c.line, staged.c.body).where(
        staged.c.backfill_id == run_id, staged.c.parent.is_(None), staged.c.line > after)
        .order_by(staged.c.parent, staged.c.line).limit(limit)).tuples().all()


@dataclass
class _Ahead:
    """A chunk handed to the helper process: its read's number, where the backfill stands when it is due
    (`_position`; None while the chunk before it is still being read, which is where it starts) and the read."""

    number: int
    position: tuple[Any, ...] | None
    future: Future[ReadAhead | None]


class HistoryReader:
    """Reads the next chunks of a shop's staged history (their lines from the database, their JSON, the webhook
    payloads, the topic's parser) in a helper process while the worker applies the chunk before them, so that on
    two cores applying a backfill does not also wait for reading it (measured at 20,000 customers: reading is
    about half the applier's time). The helper reads the lines itself, with a read-only connection of its own:
    they are not the worker's to read, then send, on the core it applies with. It reads up to `READ_AHEAD` chunks
    ahead, each starting where the one before it ends.

    Only the reading moves: the worker still takes each chunk in its own unit of work, and uses what the helper
    read only when the backfill still stands where it stood when the chunk was handed over, and the same lines
    are there to delete (else it reads the chunk itself, as without a helper, and what was read ahead after it is
    dropped). The lines after the checkpoint the worker is committing are the same before and after its commit
    (it deletes only its own chunk's), so the helper's snapshot of them (the last commit) is theirs. A helper that
    dies, hangs or cannot be started is logged and given up: the worker reads for itself from then on. `close`
    ends the helper; a new one starts with the next backfill."""

    def __init__(self, url: str) -> None:
        self._helper = Helper(url, "reading staged history")
        self._ahead: dict[int, deque[_Ahead]] = {}  # by shop: the chunks read ahead for it, in order
        self._numbers = itertools.count(1)

    @property
    def broken(self) -> bool:
        return self._helper.broken

    def read(self, run: Backfill, resource: Resource, *, after: int, limit: int, shop_domain: str) -> None:
        """Have the helper read ahead of line `after` (the run's new checkpoint) of the shop's history: the chunk
        after it, and those after that, up to `READ_AHEAD` chunks."""
        if self.broken or run.id is None:
            return
        queue = self._ahead.setdefault(run.shop_id, deque())
        if queue and queue[0].position != _position(run, after):
            self.forget(run.shop_id)  # read ahead of another line (a chunk the worker read itself)
            queue = self._ahead.setdefault(run.shop_id, deque())
        while len(queue) < READ_AHEAD:
            number = next(self._numbers)
            follows = queue[-1].number if queue else None
            future = self._helper.submit(read_staged, run.id, resource, after if follows is None else None, limit,
                                         shop_domain, number, follows)
            if future is None:
                return
            queue.append(_Ahead(number, _position(run, after) if follows is None else None, future))

    def take(self, run: Backfill) -> ReadAhead | None:
        """What the helper read for the chunk at the run's checkpoint; None when it read another, found nothing
        left, or failed (what it read after it is then dropped too)."""
        queue = self._ahead.get(run.shop_id)
        if not queue:
            return None
        ahead = queue.popleft()
        if ahead.position != _position(run, run.last_queued_line):
            ahead.future.cancel()
            self.forget(run.shop_id)
            return None
        read = self._helper.result(ahead.future)
        if read is None:
            if self.broken:
                self._ahead.clear()  # what it was reading for other shops is lost with it
            self.forget(run.shop_id)
        elif queue:
            queue[0].position = _position(run, read.last)  # the next one starts where this one ends
        return read

    def forget(self, shop_id: int) -> None:
        """The shop has no history left to read here (or lost it): what was read ahead for it is dropped."""
        for ahead in self._ahead.pop(shop_id, ()):
            ahead.future.cancel()

    @property
    def reading(self) -> bool:
        """Whether a chunk read ahead waits to be taken."""
        return any(self._ahead.values())

    def close(self, *, wait: bool = True) -> None:
        self._ahead.clear()
        self._helper.close(wait=wait)


def _object_id(body: str) -> str:
    """The id of a staged object's line, which staging checked is a string. Shopify writes it first
    (`{"id":"gid://shopify/Order/1",...`), so it is taken from there, without reading the whole line's JSON (the
    worker did that for every object of a backfill, about 3% of applying it); from the JSON otherwise."""
    if body.startswith('{"id":"'):
        end = body.find('"', 7)
        if end > 7 and "\\" not in body[7:end]:  # no escape in it: the characters are the id's own
            return body[7:end]
    return str(jsontext.loads(body)["id"])


def _position(run: Backfill, line: int) -> tuple[Any, ...]:
    """Where a run's application stands: after `line`. A run read again (`_read_again`) or started again
    (`_prepare`) has another operation or start, so the same line of another file never passes for this one."""
    return run.id, run.operation_id, as_utc(run.started_at), line


class StagedLinesChanged(BackfillError):
    """The lines the helper read are no longer all there to take: the chunk is read again."""


def _applying(session: Session, shop_id: int, now: datetime) -> list[Backfill]:
    """The shop's staged backfills, in `ORDER`. While a backfill of the shop is still running (or was killed less
    than `SILENCE` ago), only those before the first one still being read: its customers are applied while
    Shopify's file of orders is still being staged, its orders not before every customer is in."""
    runs = sorted(session.execute(sa.select(Backfill).where(col(Backfill.shop_id) == shop_id)).scalars(),
                  key=lambda run: ORDER.index(run.resource))
    running = any(at > now - SILENCE for at in (as_utc(run.queued_at) for run in runs) if at is not None)
    ready = []
    for run in runs:
        if run.status == "staged":
            ready.append(run)
        elif running and run.status in ("started", "staging"):
            break
    return ready


def history_pending(session: Session, shop_id: int) -> bool:
    """Whether the shop has staged history not yet applied."""
    return session.execute(sa.select(col(Backfill.id)).where(
        col(Backfill.shop_id) == shop_id, col(Backfill.status) == "staged").limit(1)).first() is not None


def take_history(session: Session, shop_id: int, shop_domain: str, *, now: datetime, limit: int = HISTORY_CHUNK,
                 reader: HistoryReader | None = None) -> HistoryChunk | None:
    """The next chunk of the shop's staged history, in the caller's unit of work: its nested rows taken (read and
    deleted), its own lines deleted, and the backfill's checkpoint moved past it, all committed with whatever the
    caller writes from it. A backfill with nothing left is marked done here. None when nothing is ready.

    With a reader, the chunk the helper read ahead is taken when it is the one due, and the chunk after this one
    is handed to the helper (to read, and prepare for the shop's domain) before returning.

    Raises StagedLinesLost when the database lost the staged lines; `history_lost` records it."""
    staged: sa.Table = BackfillRow.__table__  # type: ignore[attr-defined]
    for run in _applying(session, shop_id, now):
        resource = RESOURCES[run.resource]
        if run.staged and not _marker_kept(session, run):  # else what is gone would look like the end
            raise StagedLinesLost(run.id or 0)
        ahead = reader.take(run) if reader is not None else None
        prepared = None
        if ahead is not None:
            objects, prepared = ahead.objects, ahead.prepared
            last = ahead.last
            if resource.child_type:
                taken = session.connection().execute(sa.delete(staged).where(
                    staged.c.backfill_id == run.id, one_of(staged.c.parent, ahead.parent_ids, session))).rowcount
                if taken != ahead.children:
                    raise StagedLinesChanged(f"{taken} nested lines instead of {ahead.children}")
        else:
            parents = _parents(session.connection(), run.id or 0, run.last_queued_line, limit)
            if not parents:  # what is left: lines whose parent was not in the file
                session.execute(sa.delete(BackfillRow).where(col(BackfillRow.backfill_id) == run.id))
                session.execute(sa.update(Backfill).where(col(Backfill.id) == run.id).values(
                    status="done", finished_at=now, error=None))
                continue
            bodies, nested = _unfolded(parents)
            nodes = [jsontext.loads(body) for body in bodies]
            found: list[tuple[int, str]] = []
            if resource.child_type:
                # Taken (read and deleted in one statement) by their parents' ids, and put in order here, not in
                # SQL: ordered by line, SQLite would walk every staged line of the file by its primary key for
                # each chunk (quadratic in the file) instead of taking these parents' index.
                ids = [str(node["id"]) for node in nodes]
                found = list(session.execute(sa.delete(staged).where(
                    staged.c.backfill_id == run.id, one_of(staged.c.parent, ids, session))
                    .returning(staged.c.line, staged.c.body)).tuples())
            last = parents[-1][0]
            objects = [(object_id, payload, None) for object_id, payload in assemble(
                resource, nodes, _in_file_order(nested, found))]
        # Bounded below too: PostgreSQL keeps the index entries of lines deleted by earlier chunks until a vacuum,
        # and `line <= last` alone walked all of them again for every chunk (measured: the server's largest cost
        # of applying a 100,000-customer history).
        taken = session.connection().execute(sa.delete(staged).where(
            staged.c.backfill_id == run.id, staged.c.parent.is_(None), staged.c.line > run.last_queued_line,
            staged.c.line <= last)).rowcount
        if taken != len(objects):
            raise StagedLinesChanged(f"{taken} lines instead of {len(objects)}")
        session.execute(sa.update(Backfill).where(col(Backfill.id) == run.id).values(
            last_queued_line=last, queued=run.queued + len(objects)))
        if reader is not None and len(objects) == limit:  # more may follow: the helper reads them meanwhile
            reader.read(run, resource, after=last, limit=limit, shop_domain=shop_domain)
        return HistoryChunk(resource, objects, prepared)
    return None


def history_lost(engine: Engine, error: StagedLinesLost, now: datetime) -> None:
    """A staged backfill whose lines the database lost ends failed, with the reason: the next run reads the
    history again with a new bulk query."""
    log.warning("backfill %d: %s", error.run_id, error)
    with unit_of_work(engine) as session:
        session.execute(sa.update(Backfill).where(col(Backfill.id) == error.run_id).values(
            status="failed", error=str(error), finished_at=now))


def _objects(engine: Engine, run: Backfill) -> int:
    """The objects of the run's file: those applied so far and those still staged, counted in one statement (a
    worker may be applying the file meanwhile: see `_applying`)."""
    left = sa.select(sa.func.count()).select_from(BackfillRow).where(
        col(BackfillRow.backfill_id) == run.id, col(BackfillRow.parent).is_(None),
        col(BackfillRow.line) > col(Backfill.last_queued_line)).scalar_subquery()
    with unit_of_work(engine) as session:
        return int(session.execute(sa.select(col(Backfill.queued) + left).where(
            col(Backfill.id) == run.id)).scalar_one())


def history_rows(resource: Resource, domain: str, objects: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]],
                 source: str, now: datetime) -> Iterable[dict[str, object]]:
    """Inbox rows of objects read from Shopify (each with its nested rows), as their webhook topic's payload.
    The id is the object's version (resource, id, `updatedAt`), whoever read it: a backfill and a poll that
    see the same version queue it once."""
    for node, children in objects:
        payload = to_payload(resource.name, node, children)
        yield {"shop_domain": domain, "event_id": history_id(resource, node),
               "topic": resource.topic, "source": source, "body": jsontext.dumps(payload),
               "status": "pending", "received_at": now}
