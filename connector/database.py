"""Engine, schema migrations and the unit of work: the only place that commits."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel.sql.sqltypes import AutoString

from connector import jsontext

log = logging.getLogger("connector.database")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """Accept the URLs operators paste (postgres://, postgresql://) and use the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


IN_LIST = 500  # values per IN (...) list: well inside every driver's parameter limit


def insert_new(session: Session, model: Any, rows: list[dict[str, Any]], keys: list[str], *,
               mostly_new: bool = False) -> None:
    """Insert rows, leaving alone any whose unique `keys` are already there ("do nothing on conflict"), on
    PostgreSQL and SQLite alike: how replays, redeliveries and re-runs become no-ops. Each row names the same
    columns; one statement run for all of them by the driver itself (see `_driver_rows`), or on PostgreSQL, from
    `COPY_FROM` rows on, one COPY and one INSERT ... SELECT (`_copy_new`). Rows are inserted in the order given.

    With `mostly_new` (rows a key seldom repeats: the outbox's, new ledger entries), PostgreSQL first COPies them
    straight into the table, under a savepoint: should one key be there already (or twice among them), the
    savepoint is rolled back and they go the way above. Half the server's work when no key is there: the
    INSERT ... SELECT from the COPied rows cost it as much as their COPY."""
    if not rows:
        return
    connection = session.connection()
    quote = connection.dialect.identifier_preparer
    conflict = f" ON CONFLICT ({', '.join(quote.quote(k) for k in keys)}) DO NOTHING"
    if connection.dialect.name == "postgresql" and len(rows) >= COPY_FROM:
        if not (mostly_new and _copy_all_new(connection, model.__table__, rows)):
            _copy_new(connection, model.__table__, rows, conflict)
        return
    _insert(connection, model.__table__, rows, conflict)


def _copy_all_new(connection: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> bool:
    """The rows COPied into `table` under a savepoint; whether they all went in. If a unique key was there
    already (or twice among them), nothing of them is: the savepoint is rolled back, and the transaction goes on
    as before the call."""
    statement, copy_rows = _copy_rows(connection, table, rows)
    unique = connection.dialect.loaded_dbapi.errors.UniqueViolation
    went_in = True

    def copy(cursor: Any) -> None:
        nonlocal went_in
        cursor.execute("SAVEPOINT copy_all_new")
        try:
            copy_rows(cursor)
        except unique:
            cursor.execute("ROLLBACK TO SAVEPOINT copy_all_new")
            went_in = False
        cursor.execute("RELEASE SAVEPOINT copy_all_new")

    _run_driver(connection, statement, copy)
    return went_in


# On PostgreSQL, from this many rows on `insert_new` goes through COPY: an INSERT per row costs the server a
# statement each (at 100,000 customers, a backfill's half a million history orders queued for Brevo were the
# server's largest cost of applying it).
COPY_FROM = 500


def _copy_new(connection: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], conflict: str) -> None:
    """The rows COPied into a table of the connection's own shaped like `table` (emptied again at once, and at
    commit), then one INSERT ... SELECT of them in the order given (ids follow it), followed by `conflict`."""
    quote = connection.dialect.identifier_preparer
    names, values = _driver_rows(connection, table, rows)
    columns = ", ".join(quote.quote(n) for n in names)
    target, incoming = quote.format_table(table), quote.quote(f"incoming_{table.name}")
    statement = f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {incoming} ORDER BY incoming_seq{conflict}"

    def copy(cursor: Any) -> None:
        _copy_incoming(cursor, target, incoming, columns, values)
        cursor.execute(statement)
        cursor.execute(f"TRUNCATE {incoming}")  # for the next call in this transaction; cheaper than a DELETE

    _run_driver(connection, statement, copy)


def _copy_incoming(cursor: Any, target: str, incoming: str, columns: str, values: Iterable[list[Any]]) -> None:
    """The values COPied into the connection's own table `incoming`, shaped like `target` with every one of its
    columns (a call may name fewer) and a sequence number first, created on first use and emptied at commit."""
    cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {incoming} ON COMMIT DELETE ROWS AS "
                   f"SELECT 0 AS incoming_seq, * FROM {target} WITH NO DATA")
    with cursor.copy(f"COPY {incoming} (incoming_seq, {columns}) FROM STDIN") as stream:
        for seq, row in enumerate(values):
            stream.write_row([seq, *row])


def update_many(session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], keys: Sequence[str], *,
                fixed: Mapping[str, Any] | None = None, copied: Mapping[str, str] | None = None) -> None:
    """Update, for each row, the table's row whose `keys` columns hold the row's values: its other columns are
    set to the row's (each row names the same columns), those of `fixed` to the same value for every row (a key
    too: it is matched on its value before), and each column of `copied` to the value another column held
    (`{"sent": "pending"}`: SET sent = pending). Values go through the columns' own types. A row that matches
    nothing changes nothing; `keys` must tell the rows apart. One statement run by the driver for every row, or on
    PostgreSQL, from `COPY_FROM` rows on, one COPY and one UPDATE ... FROM: an UPDATE per row costs the server a
    statement each, and SQLAlchemy's own executemany handled each row's parameters one by one (a backfill updates
    every buyer's row several times)."""
    if not rows:
        return
    connection = session.connection()
    quote = connection.dialect.identifier_preparer
    names, values = _driver_rows(connection, table, rows, with_defaults=False)
    constants: list[str] = []
    constant_values: list[Any] = []
    if fixed:
        constants, each = _driver_rows(connection, table, [fixed], with_defaults=False)
        constant_values = next(each)
    target = quote.format_table(table)
    postgres = connection.dialect.name == "postgresql"
    mark = "%s" if postgres else "?"
    if postgres and len(rows) >= COPY_FROM:
        incoming = quote.quote(f"incoming_{table.name}")
        assigned = [f"{quote.quote(n)} = i.{quote.quote(n)}" for n in names if n not in keys]
        assigned += [f"{quote.quote(n)} = {mark}" for n in constants]
        assigned += [f"{quote.quote(n)} = {target}.{quote.quote(source)}" for n, source in (copied or {}).items()]
        matched = " AND ".join(f"{target}.{quote.quote(k)} = i.{quote.quote(k)}" for k in keys)
        statement = f"UPDATE {target} SET {', '.join(assigned)} FROM {incoming} AS i WHERE {matched}"

        def copy(cursor: Any) -> None:
            _copy_incoming(cursor, target, incoming, ", ".join(quote.quote(n) for n in names), values)
            cursor.execute(statement, constant_values)
            cursor.execute(f"TRUNCATE {incoming}")

        _run_driver(connection, statement, copy)
        return
    set_at = [i for i, n in enumerate(names) if n not in keys]  # each row's values: those set, then the keys
    key_at = [names.index(k) for k in keys]
    assigned = [f"{quote.quote(n)} = {mark}" for n in [names[i] for i in set_at] + constants]
    assigned += [f"{quote.quote(n)} = {quote.quote(source)}" for n, source in (copied or {}).items()]
    statement = (f"UPDATE {target} SET {', '.join(assigned)} WHERE "
                 + " AND ".join(f"{quote.quote(k)} = {mark}" for k in keys))
    _run_driver(connection, statement, lambda cursor: cursor.executemany(
        statement, ([*(row[i] for i in set_at), *constant_values, *(row[i] for i in key_at)] for row in values)))


def insert_rows(session: Session, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
                columns: Sequence[str] | None = None) -> None:
    """Insert rows known to be new (each naming the same columns), with no conflict handling: one COPY on
    PostgreSQL, which costs it several times less per row than INSERT statements (a backfill writes millions),
    one executemany on SQLite. Values go through the columns' own types, as in an INSERT. With `columns`, only
    those are taken from each row, which may hold more (an ORM row's `__dict__`, without copying it)."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        _insert(connection, table, rows, columns=columns)
        return
    _run_driver(connection, *_copy_rows(connection, table, rows, columns=columns))


def _copy_rows(connection: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
               columns: Sequence[str] | None = None) -> tuple[str, Callable[[Any], None]]:
    """PostgreSQL: the COPY of the rows into `table` (their values as `_driver_rows` makes them), and what runs it
    on a cursor of the driver's."""
    quote = connection.dialect.identifier_preparer
    names, values = _driver_rows(connection, table, rows, columns=columns)
    statement = f"COPY {quote.format_table(table)} ({', '.join(quote.quote(n) for n in names)}) FROM STDIN"

    def copy(cursor: Any) -> None:
        with cursor.copy(statement) as stream:
            for row in values:
                stream.write_row(row)

    return statement, copy


def _insert(connection: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], suffix: str = "", *,
            columns: Sequence[str] | None = None) -> None:
    """One INSERT (followed by `suffix`) run by the driver for every row."""
    quote = connection.dialect.identifier_preparer
    names, values = _driver_rows(connection, table, rows, columns=columns)
    mark = "%s" if connection.dialect.name == "postgresql" else "?"
    statement = (f"INSERT INTO {quote.format_table(table)} ({', '.join(quote.quote(n) for n in names)}) "
                 f"VALUES ({', '.join([mark] * len(names))}){suffix}")
    _run_driver(connection, statement, lambda cursor: cursor.executemany(statement, values))


def _driver_rows(connection: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], *,
                 with_defaults: bool = True, columns: Sequence[str] | None = None
                 ) -> tuple[list[str], Iterator[list[Any]]]:
    """The column names and each row's values as the driver takes them, made as an INSERT through SQLAlchemy
    makes them (each value through its column's type; a column left out takes its default), without its
    per-row, per-parameter bookkeeping, which cost as much as the database's own work for the batches a
    backfill writes. None goes through its column's type too: a JSON column stores it as JSON null. Without
    `with_defaults` (for an update), only the columns the rows name."""
    dialect = connection.dialect

    def processor(name: str) -> Any:
        kind = table.c[name].type.dialect_impl(dialect)
        if type(kind) is sqlite.DATETIME and getattr(kind, "_storage_format", None) == _SQLITE_DATETIME:
            return _sqlite_datetime
        return kind.bind_processor(dialect)

    names = list(rows[0] if columns is None else columns)
    defaults = {c.name: c.default.arg for c in table.columns  # type: ignore[attr-defined]
                if with_defaults and c.name not in names and c.default is not None and c.default.is_scalar}
    typed = [(name, processor(name)) for name in names]
    fixed = [value if (bind := processor(name)) is None else bind(value) for name, value in defaults.items()]
    return names + list(defaults), (
        [row[name] if bind is None else bind(row[name]) for name, bind in typed] + fixed for row in rows)


# How SQLAlchemy stores a date and time in SQLite by default (`sqlite.DATETIME`), and the same text made from a
# tuple instead of a dict of the seven parts: about half the time, and a backfill writes millions of them.
_SQLITE_DATETIME = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"


def _sqlite_datetime(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        # A %-format of a tuple: twice as fast as the f-string of the same seven parts.
        return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031
            value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond)
    if isinstance(value, date):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d} 00:00:00.000000"
    raise TypeError("SQLite DateTime type only accepts Python datetime and date objects as input.")


def _run_driver(connection: sa.Connection, statement: str, work: Any) -> None:
    """Run `work` on a cursor of the connection's own driver connection (inside its transaction); a driver error
    is raised as SQLAlchemy raises it for a statement (IntegrityError, OperationalError, ...)."""
    dialect = connection.dialect
    driver = connection.connection.driver_connection
    assert driver is not None  # the session's connection is open: it is in a transaction
    cursor = driver.cursor()
    try:
        work(cursor)
    except dialect.loaded_dbapi.Error as exc:
        lost = dialect.is_disconnect(exc, connection.connection, cursor)
        if lost:  # as SQLAlchemy does: the pool does not hand out a dead connection again
            connection.invalidate(exc)
        raise sa.exc.DBAPIError.instance(statement, None, exc, dialect.loaded_dbapi.Error,
                                         connection_invalidated=lost) from exc
    finally:
        cursor.close()


def one_of(column: Any, values: Iterable[Any], bind: Session | sa.Connection) -> sa.ColumnElement[bool]:
    """`column IN (values)`. On PostgreSQL `column = ANY(array)`, the values as one array parameter, so that the
    statement's text is the same for any number of values: psycopg then parses it once and prepares it on the
    server, instead of handling an IN list of up to `IN_LIST` parameters as new text each time."""
    dialect = bind.get_bind().dialect if isinstance(bind, Session) else bind.dialect
    if dialect.name == "postgresql":
        # Text as text of any length: cast to the column's VARCHAR(n)[], a longer value would be cut to n
        # characters, and could then match a row it is not.
        item = sa.String() if _holds_text(column.type) else column.type
        return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(item)))
    return column.in_(list(values))  # type: ignore[no-any-return]


def _holds_text(kind: sa.types.TypeEngine[Any]) -> bool:
    return isinstance(kind, sa.String | AutoString)


def chunked(values: Iterable[Any], size: int = IN_LIST) -> Iterator[list[Any]]:
    """Values in sorted runs of at most `size`, for IN lists (sorted: the same set gives the same statements)."""
    ordered = sorted(values)
    for start in range(0, len(ordered), size):
        yield ordered[start:start + size]


def refresh_statistics(engine: Engine, *tables: sa.Table) -> None:
    """PostgreSQL plans from each table's statistics, which autovacuum refreshes a minute or more after a table
    has grown, or never where autovacuum is off. A table that just grew from nothing by a million rows was then
    planned as nearly empty: measured, a backfill's chunk of 2,000 staged objects was taken by reading the whole
    staged file (808 ms) instead of through the index made for it (7 ms). So work that fills tables in bulk
    refreshes them itself, here: each table in a transaction of its own (ANALYZE locks out another ANALYZE of it
    until it commits), from a sample of 30,000 rows (about a second at a million rows). It is only an optimisation:
    an error (a statement timeout, say) is logged and the work goes on. SQLite plans without them."""
    if engine.dialect.name != "postgresql":
        return
    quote = engine.dialect.identifier_preparer
    for table in tables:
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f"ANALYZE {quote.format_table(table)}"))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not refresh the statistics of %s: %s", table.name, exc)


def commit_without_waiting(session: Session) -> None:
    """On PostgreSQL, the session's transaction commits without waiting for its write-ahead log to reach the disk
    (`synchronous_commit = off`, for this transaction alone): for work that is done again if its commit is lost
    (a chunk of a backfill's staged history, whose staged lines go in the same commit; a batch of buyers built,
    who stay dirty). A large one waited 50 ms and more for the disk (measured: 2.5 s of building 20,000 buyers
    on PostgreSQL). Should the server crash, the last such commits (those of its last 0.6 s at most, by default)
    are lost whole, never in part, and the work is done again; what went to Brevo from them meanwhile goes again
    (at least once, as when the process dies between Brevo's answer and its commit). Any later commit that writes
    and waits makes every one before it durable. SQLite: nothing (in its WAL mode with synchronous=NORMAL, a
    commit does not wait for the disk already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET LOCAL synchronous_commit = off"))


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, read_only: bool = False, **kwargs: Any) -> Engine:
    """The engine of the connector's database. `read_only`: for a helper process that only reads, whose
    transactions must not hold up the writers (on SQLite, the others begin by taking the write lock)."""
    url = normalise_url(url)
    # JSON columns (contact bodies, outbox rows) read and written with orjson: several times the standard
    # library's speed, the same values.
    kwargs.setdefault("json_serializer", jsontext.dumps)
    kwargs.setdefault("json_deserializer", jsontext.loads)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            **kwargs,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        if read_only:
            event.listen(engine, "connect", _sqlite_read_only)
            event.listen(engine, "begin", _sqlite_read_begin)
        else:
            event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # psycopg prepares a statement run five times; PostgreSQL then may switch to a generic plan made from the
    # statistics of that moment. Tables that grow fast (a shop's first hour, a sale) get generic plans that scan
    # by shop only (measured: a contact's primary-key UPDATE at 1 ms instead of 0.1). Plans are made for the
    # actual values instead; statements stay prepared, so parsing is still saved.
    options = "-c plan_cache_mode=force_custom_plan" + (" -c default_transaction_read_only=on" if read_only else "")
    kwargs.setdefault("connect_args", {"options": options})
    engine = sa.create_engine(url, pool_pre_ping=True, **kwargs)
    event.listen(engine, "connect", _postgres_session)
    return engine


POSTGRES_SESSION = (
    # Values over 2 kB (inbox bodies, a buyer's attributes, outbox rows) are compressed with lz4 instead of
    # PostgreSQL's default pglz, which costs the server more CPU for them (measured once each, on a shared
    # machine: a backfill of 10,000 customers took 51 s instead of 55 s, queuing 7.6 s instead of 9.1 s).
    "default_toast_compression = lz4",
    # No JIT compilation: it pays off for long analytical queries, and the connector runs short ones, which
    # PostgreSQL compiled for 10 to 30 ms each whenever a large table made their estimated cost high.
    "jit = off",
    # The planner's cost of reading a page out of order, relative to reading the next one: PostgreSQL's default (4)
    # is a spinning disk's, and had it scan a whole table (customers by phone, contacts, refunds) rather than probe
    # an index for a batch's few hundred keys, once per batch: work that grows with the square of the shop. The
    # connector's tables are read from memory or SSD, where 1.1 is the usual setting (measured at 100,000
    # customers: building its buyers took 95 s instead of 136, the whole backfill 445 s instead of 486).
    "random_page_cost = 1.1",
)


def _postgres_session(dbapi_connection: Any, _record: Any) -> None:
    """Each setting of `POSTGRES_SESSION` on a new connection; a server without it (built without lz4, older than
    PostgreSQL 14) keeps its default."""
    import psycopg

    for setting in POSTGRES_SESSION:
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET {setting}")
            dbapi_connection.commit()
        except psycopg.Error:
            dbapi_connection.rollback()


# Pages of 8 KB instead of SQLite's 4 KB: a backfill writes its staged files (1.7 GB at 100,000 customers) a chunk
# per commit, and each page costs its own write to the log and its own copy into the file at a checkpoint. Measured
# on a backfill of 100,000 customers (2 cores): staging 25 s instead of 29-34 s with 4 KB; 16 KB staged in 24 s but
# raised the connector's peak RSS to 282 MB (260-264 MB with 4 and 8 KB). Set when the file is created (before its
# first table, and before the log is switched on); a database created with other pages keeps them (SQLite changes
# them only when it rebuilds the file, with VACUUM outside WAL mode).
SQLITE_PAGE_SIZE = 8192


def sqlite_page_size(dbapi_connection: Any, _record: Any = None) -> None:
    """The page size of a new SQLite file (`SQLITE_PAGE_SIZE`); nothing on one that has tables already."""
    dbapi_connection.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite must not open transactions itself: _sqlite_begin issues BEGIN IMMEDIATE.
    dbapi_connection.isolation_level = None
    sqlite_page_size(dbapi_connection)
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # A page cache of 64 MB per connection instead of SQLite's 2 MB: a shop's tables outgrow 2 MB at a few
    # thousand orders, and every index lookup then re-reads pages through the OS (measured: a backfill of
    # 100,000 customers took 733 s with 2 MB, 533 s with 64 MB). It is filled as pages are read, not up front.
    cur.execute("PRAGMA cache_size=-65536")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    # Erased rows (a customer's or a shop's, at Shopify's request) are overwritten, not left in free pages.
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def _sqlite_read_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA query_only=ON")


def _sqlite_read_begin(conn: sa.Connection) -> None:
    # A deferred transaction: one snapshot for its reads, without the write lock (WAL lets a writer go on).
    conn.exec_driver_sql("BEGIN")


def _sqlite_begin(conn: sa.Connection) -> None:
    # Writers take the write lock up front: no deadlock-prone read->write upgrades between workers.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class WalCheckpointer:
    """SQLite: copy the write-ahead log into the database file from a thread of its own, soon after each
    `written` (every `interval` seconds at most, so that a burst's commits gather into one checkpoint), while the
    writer goes on. A PASSIVE checkpoint waits for no reader or writer: commits go on meanwhile, and SQLite does
    the copying without holding the interpreter, so it runs on another core. The log still starts over only after
    a commit's own checkpoint (SQLite's automatic one, left on), which then has only the last few pages to copy.
    Used by the intake (a webhook waits behind each commit) and by a backfill's staging (1.7 GB of lines at
    100,000 customers). `close` ends the thread."""

    def __init__(self, engine: Engine, *, interval: float = 0.05) -> None:
        self.engine, self.interval = engine, interval
        self.pending = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="wal-checkpointer", daemon=True)
        self.thread.start()

    def written(self) -> None:
        self.pending.set()

    def close(self) -> None:
        """The thread copies what is left in the log, then ends."""
        self.closed = True
        self.pending.set()
        self.thread.join()

    def _run(self) -> None:
        while True:
            self.pending.wait()
            if not self.closed:
                time.sleep(self.interval)
            self.pending.clear()
            try:
                # A pooled connection for the moment of the checkpoint only: one held open for good would outlive
                # its engine (and SQLite's record of the locks this process holds on the file).
                raw = self.engine.raw_connection()
                try:
                    raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    raw.close()
            except Exception as exc:  # the log just grows a little more; the next turn tries again
                log.warning("write-ahead log checkpoint failed: %s", exc)
            if self.closed:
                return


def forget_erased(engine: Engine, *, attempts: int = 50, pause: float = 0.1) -> bool:
    """After an erasure: on SQLite, copy the write-ahead log into the database file and empty it, so the erased
    rows' old pages are nowhere on disk (secure_delete zeroed them in the file). SQLite refuses at once (busy)
    while another connection checkpoints or holds a snapshot the log still serves, so it is tried again, for up
    to `attempts` x `pause` seconds; failing that, it says so, and the next erasure or checkpoint finishes it.
    Returns whether the log was emptied. PostgreSQL reclaims the space of deleted rows through autovacuum."""
    if not is_sqlite(engine):
        return True
    raw = engine.raw_connection()
    try:
        for attempt in range(attempts):
            if attempt:
                time.sleep(pause)
            busy, _, _ = raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return True
    finally:
        raw.close()
    log.warning("the write-ahead log still holds erased rows: another connection kept it busy for %.0f s; the "
                "next erasure or checkpoint empties it", attempts * pause)
    return False


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Create or update the schema to the newest migration."""
    command.upgrade(alembic_config(url), "head")


@contextmanager
def unit_of_work(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back otherwise."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
