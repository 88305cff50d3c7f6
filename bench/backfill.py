"""Benchmark: a whole shop's history backfilled from the simulated Shopify into the simulated Brevo.

Run by hand:  .venv/bin/python bench/backfill.py [--customers 100000] [--database sqlite|postgres] [--alongside]
              [--keep]

A separate process builds a simulated store (`LargeStore`: N customers, N/10 guests, 5 orders per customer on
average, 200 products; each object rebuilt from its index, so the simulator's memory stays flat) and serves the
simulated Admin API (bulk operations) and the simulated Brevo over loopback, so that the connector's own memory is
measured alone. The store writes its bulk files once, before the clock starts, so the time measured is the
connector's and not the simulator's (each file is still served only once its operation has run, `bulk_seconds`).
The connector then runs what a merchant runs on the day they connect: `run_backfill` (bulk queries, JSONL streamed
and staged), then one worker until idle (the staged history applied through the webhook handlers, contacts
imported, orders sent as historical batches), so that each step is measured alone. With --alongside the backfill
runs in a process of its own while the worker runs, as in production (`connector backfill` beside `connector run`);
the worker applies the history once the backfill has staged every file and stopped, so on two cores that overlaps
only the bulk queries and staging with the worker's first turns.
Brevo's 100-per-hour budget for batch endpoints is lifted here (a real account paces historical orders at
100 calls an hour; see the README's limits) so that the connector's own speed is what is measured; for the same
reason the simulated Brevo does not check request bodies against Brevo's OpenAPI document here (the tests do):
on two cores its schema checks of 1,000-order batches took more time than the connector spent making them.

Prints the time of each phase, the connector's peak RSS, the Shopify queries and the Brevo calls by endpoint.
Targets (issue: backfill): 100,000 customers / 500,000 orders in <= 3 min, peak RSS <= 300 MB and flat from
10,000 to 100,000 customers, <= 1 Brevo contacts call per 5,000 contacts.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import queue
import resource
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DOMAIN = "bench-backfill.myshopify.com"
TOKEN = "bench-admin-token"
BREVO_KEY = "bench-brevo-key"


def _serve(customers: int, ready: Any, stop: Any, report: Any) -> None:
    """The simulated Shopify and Brevo, in their own process."""
    from connector.sandbox.brevo import BrevoLimits, BrevoSandbox
    from connector.sandbox.server import serve_in_thread
    from connector.sandbox.shopify import LargeStore
    from connector.sandbox.shopify_admin import ShopifyAdminSandbox

    started = time.monotonic()
    store = LargeStore(DOMAIN, customers=customers, guests=max(customers // 10, 1), products=200,
                       orders_per_customer=5.0, start=datetime(2024, 11, 1, tzinfo=UTC))
    shopify = ShopifyAdminSandbox(tokens={TOKEN}, store=store, bulk_seconds=1.0)
    brevo = BrevoSandbox(api_keys={BREVO_KEY}, limits=BrevoLimits(contacts=(1000, 1.0), other=(100_000, 3600.0)),
                         validate=False)
    servers = [serve_in_thread(shopify.app), serve_in_thread(brevo.app)]
    cpu = _cpu()
    ready.put({"shopify": servers[0].url, "brevo": f"{servers[1].url}/v3", "customers": len(store.customers),
               "orders": len(store.orders), "products": len(store.products),
               "seconds": round(time.monotonic() - started, 1)})
    stop.wait()
    report.put({"cpu": _cpu() - cpu, "shopify": Counter(shopify.calls),
                "brevo": Counter(c.path for c in brevo.calls),
                "brevo_contacts": len(brevo.contacts), "brevo_orders": len({o["id"] for o in brevo.orders})})
    for server in servers:
        server.stop()
    store.close()  # its bulk files: about 1.7 GB at 100,000 customers


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(spent: dict[str, float], name: str, fn: Any, cpu: dict[str, float] | None = None) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began, used = time.monotonic(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.monotonic() - began
            if cpu is not None:
                cpu[name] += time.process_time() - used
    return wrapper


def _time_phases(worker: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Wrap the worker's steps so that the benchmark can say where its wall time (and its process's CPU) went."""
    from sync import push
    from sync import worker as worker_module

    spent: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    for name in ("apply_inbox", "apply_history", "_settle_history_figures", "_build_profiles", "_history_queued",
                 "_has_pending_work"):
        setattr(worker, name, _timed(spent, name.strip("_"), getattr(worker, name), cpu))
    worker_module.recompute_shop = _timed(spent, "rfm", worker_module.recompute_shop, cpu)
    for name in ("push_contacts", "push_events", "check_imports", "push_catalog"):
        setattr(push.Pusher, name, _timed(spent, name, getattr(push.Pusher, name), cpu))
    worker.wake.wait = _timed(spent, "idle", worker.wake.wait)
    return spent, cpu


def _time_backfill() -> dict[str, float]:
    """The same for the backfill's steps: waiting for Shopify's files, staging them."""
    from sync import backfill

    spent: dict[str, float] = defaultdict(float)
    for name in ("_wait", "_stage"):
        setattr(backfill, name, _timed(spent, name.strip("_"), getattr(backfill, name)))
    return spent


def _settings(url: str, served: dict[str, Any]) -> Any:
    from connector.settings import Settings

    return Settings(DATABASE_URL=url, SHOPIFY_SHOP=DOMAIN, SHOPIFY_ACCESS_TOKEN=TOKEN,
                    SHOPIFY_ADMIN_URL=served["shopify"], BREVO_API_KEY=BREVO_KEY, BREVO_API_URL=served["brevo"],
                    CONNECTOR_RECONCILE_MINUTES=0, _env_file=None)  # type: ignore[call-arg]


def _backfill(url: str, served: dict[str, Any]) -> dict[str, Any]:
    """`connector backfill`: bulk queries, files staged; what it did and what it cost."""
    from connector.database import make_engine
    from connector.runtime import tune_gc
    from connector.shopify import ShopifyClient
    from sync.backfill import run_backfill

    tune_gc()  # as the `connector` command does
    steps = _time_backfill()
    client = ShopifyClient(DOMAIN, TOKEN, api_version=_settings(url, served).shopify_api_version,
                           admin_url=served["shopify"])
    engine = make_engine(url)
    began = time.monotonic()
    results = run_backfill(engine, client, DOMAIN, poll_seconds=0.5)
    seconds = time.monotonic() - began
    engine.dispose()  # its connections' page caches go, as when `connector backfill` exits
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "steps": dict(steps), "rss": usage.ru_maxrss / 1024,
            "cpu": usage.ru_utime + usage.ru_stime,
            "results": [f"{r.resource}: {r.status}, {r.objects:,} objects, {r.lines_read:,} lines" for r in results]}


def _backfill_process(url: str, served: dict[str, Any], done: Any) -> None:
    done.put(_backfill(url, served))


def run(customers: int, database: str, *, alongside: bool, keep: bool = False) -> None:
    from connector.database import make_engine, normalise_url, upgrade
    from connector.runtime import tune_gc
    from connector.shops import ensure_single_store_shop
    from sync.worker import Worker

    tune_gc()  # as the `connector` command does
    ctx = mp.get_context("spawn")
    ready, report, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    sandbox = ctx.Process(target=_serve, args=(customers, ready, stop, report), daemon=True)
    sandbox.start()
    served = ready.get(timeout=3600)
    print(f"simulated store: {served['customers']:,} customers, {served['orders']:,} orders, "
          f"{served['products']} products (built in {served['seconds']} s)")
    if database == "postgres":
        admin = sa.create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("DROP DATABASE IF EXISTS bench_backfill"))
            conn.execute(sa.text("CREATE DATABASE bench_backfill"))
        admin.dispose()
        url = PG_URL.rsplit("/", 1)[0] + "/bench_backfill"
    else:
        folder = tempfile.mkdtemp(prefix="bench-backfill-")
        url = f"sqlite:///{Path(folder) / 'connector.db'}"
    upgrade(url)
    engine = make_engine(url)
    settings = _settings(url, served)
    ensure_single_store_shop(engine, settings)
    worker = Worker(engine, settings)
    phases, phase_cpu = _time_phases(worker)

    started = time.monotonic()
    if alongside:
        # As a merchant runs it: `connector backfill` in a process of its own while the worker is running.
        done = ctx.Queue()
        process = ctx.Process(target=_backfill_process, args=(url, served, done), daemon=True)
        process.start()
        backfill: dict[str, Any] | None = None
        while backfill is None:
            if not worker.run_once():
                worker.wake.wait(0.05)
            with contextlib.suppress(queue.Empty):
                backfill = done.get_nowait()
        process.join()
    else:
        backfill = _backfill(url, served)
    queued = started + backfill["seconds"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker.run(until_idle=True, idle_sleep=0.05)  # ends with its helper process, if one ran
    applied = time.monotonic()
    helper = resource.getrusage(resource.RUSAGE_CHILDREN)
    helper_cpu = helper.ru_utime + helper.ru_stime - children.ru_utime - children.ru_stime
    for line in backfill["results"]:
        print(f"  {line}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss, cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    stop.set()
    calls = report.get(timeout=60)
    sandbox.join(timeout=30)
    with engine.connect() as conn:
        contacts = conn.execute(sa.text("SELECT count(*) FROM contacts WHERE sent IS NOT NULL "
                                        "AND push_state <> 'dead'")).scalar_one()
        dead = {str(source): int(n) for source, n in conn.execute(
            sa.text("SELECT source, count(*) FROM dead_letters GROUP BY source"))}
        events = {str(name): int(n) for name, n in conn.execute(
            sa.text("SELECT event_name, count(*) FROM outbox WHERE target = 'event' GROUP BY event_name"))}
    contact_calls = sum(n for path, n in calls["brevo"].items() if path.startswith("/v3/contacts/import")
                        or path == "/v3/contacts")
    print(f"database {database}, worker {'alongside the backfill' if alongside else 'after the backfill'}: "
          f"backfill (bulk queries, files staged) {queued - started:.1f} s; "
          f"worker until idle {applied - queued:.1f} s after it; total {applied - started:.1f} s")
    print("backfill's wall time by step: " + ", ".join(f"{name} {seconds:.1f} s"
                                                       for name, seconds in backfill["steps"].items()))
    print("worker's wall time by step (its process's CPU): " + ", ".join(
        f"{name} {seconds:.1f} s" + (f" ({phase_cpu[name]:.1f})" if name in phase_cpu else "")
        for name, seconds in phases.items()))
    print(f"peak RSS: worker {rss:.0f} MB, backfill {backfill['rss']:.0f} MB" if alongside else
          f"peak RSS of the connector (backfill, then worker, in one process): {rss:.0f} MB")
    print(f"CPU time (user and system: on a shared machine steadier than wall time): backfill {backfill['cpu']:.1f} s, "
          f"worker {cpu - (0 if alongside else backfill['cpu']):.1f} s"
          + (f" and its helper processes (reading the staged history, building buyers) {helper_cpu:.1f} s (peak RSS "
             f"{helper.ru_maxrss / 1024:.0f} MB{', or the backfill process' if alongside else ''})"
             if helper_cpu else "")
          + f"; the simulated Shopify and Brevo {calls['cpu']:.1f} s (their process shares the two cores)")
    if worker.builder is not None and worker.builder.shares:
        print("the builder's helper ended with these shares of each split batch: " + ", ".join(
            f"{work} {share:.2f}" for work, share in worker.builder.shares.items()))
    print(f"Shopify queries: {dict(calls['shopify'])}")
    print(f"Brevo calls: {dict(calls['brevo'])}")
    print(f"contacts delivered {contacts:,} (Brevo holds {calls['brevo_contacts']:,}) in {contact_calls} contact "
          f"calls: {contacts / max(contact_calls, 1):,.0f} contacts per call; Brevo holds "
          f"{calls['brevo_orders']:,} ecommerce orders")
    print(f"dead letters: {dead or 'none'}; events (history must send none): {events or 'none'}")
    engine.dispose()
    if database == "sqlite":
        if keep:
            print(f"the database is kept in {folder}")
        else:
            shutil.rmtree(folder)  # about 4 GB at 100,000 customers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--alongside", action="store_true",
                        help="run the backfill in a process of its own while the worker runs, as in production")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite database, to look into it afterwards")
    args = parser.parse_args()
    run(args.customers, args.database, alongside=args.alongside, keep=args.keep)


if __name__ == "__main__":
    main()
