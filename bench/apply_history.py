"""Benchmark: a staged backfill applied and its buyers built, alone, from the same database each run.

Run by hand:  .venv/bin/python bench/apply_history.py [--customers 3000] [--build] [--folder DIR]

The first run with a given --customers stages the simulated store's history once (as `bench/backfill.py` does, with
the simulated Shopify in a process of its own) into an SQLite database kept in --folder. Each run then copies that
database and times one worker applying the staged history (`Worker.apply_history` until none is left) and, with
--build, the shop's first RFM figures and the building of every buyer, the two steps of a backfill that run in the
connector's own process. No Brevo call is made.

Two versions of the code are compared on a machine whose speed varies from minute to minute by counting
instructions instead of seconds, which the machine's load does not change:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python bench/apply_history.py --customers 1000

prints its total ("Collected") once staged; run the same command with `--skip` for what starting up costs, and
take the difference.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import backfill as whole  # noqa: E402  (bench/backfill.py: the simulated store and the settings)


def stage(customers: int, staged: Path) -> None:
    """The store's history staged into `staged`, as `connector backfill` leaves it."""
    from connector.database import make_engine, upgrade
    from connector.shops import ensure_single_store_shop

    ctx = mp.get_context("spawn")
    ready, report, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    sandbox = ctx.Process(target=whole._serve, args=(customers, ready, stop, report), daemon=True)
    sandbox.start()
    served = ready.get(timeout=3600)
    url = f"sqlite:///{staged}"
    upgrade(url)
    engine = make_engine(url)
    ensure_single_store_shop(engine, whole._settings(url, served))
    engine.dispose()
    whole._backfill(url, served)
    stop.set()
    report.get(timeout=60)
    sandbox.join(timeout=30)


def run(customers: int, folder: Path, *, build: bool, skip: bool) -> None:
    from connector.database import make_engine, unit_of_work
    from connector.models import Shop
    from connector.runtime import tune_gc
    from sync.queue import lease_due_shops
    from sync.worker import Worker, recompute_shop

    tune_gc()  # as the `connector` command does
    staged = folder / f"staged-{customers}.db"
    if not staged.exists():
        folder.mkdir(parents=True, exist_ok=True)
        stage(customers, staged)
    with tempfile.TemporaryDirectory(prefix="bench-apply-") as work:
        url = f"sqlite:///{Path(work) / 'connector.db'}"
        shutil.copy(staged, Path(work) / "connector.db")
        engine = make_engine(url)
        settings = whole._settings(url, {"shopify": "http://127.0.0.1:9", "brevo": "http://127.0.0.1:9/v3"})
        worker = Worker(engine, settings)
        lease = lease_due_shops(engine, owner="bench", now=worker.clock.now(), seconds=3600, polls=False)[0]
        with unit_of_work(engine) as session:
            shop = session.get(Shop, lease.shop_id)
        assert shop is not None
        if skip:
            print("started up; nothing applied (--skip)")
            return
        began, cpu = time.monotonic(), time.process_time()
        applied = 0
        while size := worker.apply_history(lease, shop):
            applied += size
        seconds, used = time.monotonic() - began, time.process_time() - cpu
        print(f"applied {applied:,} staged objects: {seconds:.2f} s, CPU {used:.2f} s, "
              f"{1e6 * used / max(applied, 1):.0f} us of CPU per object")
        if build:
            now = worker.clock.now()
            began, cpu = time.monotonic(), time.process_time()
            worker._settle_history_figures(lease, shop, now)
            with unit_of_work(engine) as session:
                recompute_shop(session, shop, now)
            with unit_of_work(engine) as session:
                shop = session.get(Shop, lease.shop_id) or shop
            worker._build_profiles(lease, shop, now)
            print(f"RFM figures and every buyer built: {time.monotonic() - began:.2f} s, "
                  f"CPU {time.process_time() - cpu:.2f} s")
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--build", action="store_true", help="then the RFM figures and every buyer's build")
    parser.add_argument("--skip", action="store_true", help="start up only (for instruction counts)")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "bench-apply-history",
                        help="where the staged database is kept between runs")
    args = parser.parse_args()
    run(args.customers, args.folder, build=args.build, skip=args.skip)


if __name__ == "__main__":
    main()
