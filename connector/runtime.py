"""What every connector process sets for itself when it starts: the `connector` command, and the helper processes
its workers start (`sync.helper`), which run none of the command's own start-up."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def tune_gc() -> None:
    """Python's cyclic garbage collector runs after every 700 new objects by default; the worker makes and drops
    hundreds of thousands (each delivery's payload, records and rows), so it ran all the time. Every 10,000, and
    the full collection less often: a backfill is applied about 12% faster with the same peak memory
    (bench/backfill.py). A helper process reading staged history made its records 35% faster so (20,000 orders:
    2.9 s with the defaults, 1.8 s tuned). Within a unit of work on a batch, it waits (`collected_after`)."""
    gc.set_threshold(10_000, 20, 100)


@contextlib.contextmanager
def collected_after() -> Iterator[None]:
    """The cyclic garbage collector held off while the block runs (a chunk of history applied, a batch of buyers
    built, a helper's task), to run once it is done if it is due: a chunk is tens of thousands of objects alive
    at once, which a collection in its midst walks for nothing and moves to an older generation, where the next
    ones walk them again (applying and building a staged history of 10,000 customers, `bench/apply_history.py
    --build`: the collector's time in the worker and its helpers 2.1 s of about 40). Collecting less often
    instead (every 100,000 new objects) saved the same time but let garbage pile up between collections, most of
    it while history's orders went to Brevo (reference cycles holding what was sent, httpx's among them): a
    100,000-customer backfill peaked at 681 MB instead of 257.

    The collector is the process's: while a block runs, the garbage of the process's other threads (in `connector
    run`, the webhook intake's) waits for its end too. A block in a block leaves the collector as it finds it;
    of two threads' blocks, the first to end turns it back on. It is never left off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
