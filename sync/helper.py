"""A helper process, with a read-only connection of its own to the connector's database when its work reads it,
to which a worker hands work it would otherwise do on its one core: reading the next chunk of a backfill's staged
history (`sync.backfill.HistoryReader`), building part of each large batch of buyers (`sync.profiles`).

What the helper computes is only read: the worker writes it in its own unit of work. A helper that dies, hangs
or cannot be started is logged and given up, and the worker does the work itself from then on; `close` ends it.
"""

from __future__ import annotations

import copyreg
import logging
import multiprocessing
import pickle
import signal
import types
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from typing import Any, TypeVar, cast

from sqlalchemy.engine import Engine

from connector.database import make_engine
from connector.runtime import collected_after, tune_gc

log = logging.getLogger("connector.helper")

HELPER_SECONDS = 120.0  # a helper that takes longer for one task (a second or so) is given up
SHARE_STEP = 0.02  # how far a helper's share of split work moves after each split (`Helper.share`)
# Up to all of it: with the next batch's part handed over early (`profiles.Lookahead`), a helper may do every
# buyer's reading while the worker settles and writes (measured at 100,000 customers: it settled at 0.97).
SHARE_BOUNDS = (0.1, 1.0)
T = TypeVar("T")

# Shop settings hold read-only mappings (`types.MappingProxyType`), which pickle cannot send as they are: they
# cross to the helper as the same mapping, read-only again on the other side.
def read_only_mapping(values: dict[Any, Any]) -> types.MappingProxyType[Any, Any]:
    return types.MappingProxyType(values)


copyreg.pickle(types.MappingProxyType, lambda proxy: (read_only_mapping, (dict(proxy),)))

_engine: Engine | None = None  # in the helper process: its read-only engine


def helper_engine() -> Engine:
    """In the helper process: the read-only engine of the database the worker uses."""
    assert _engine is not None, "only in the helper process (Helper)"
    return _engine


def _started(url: str | None) -> None:
    """In the helper process: its engine, if it reads the database; the worker's garbage collection settings
    (a spawned process starts with Python's defaults); an interrupt from the terminal is for the worker, which
    ends its helper itself."""
    global _engine
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_gc()
    if url is not None:
        _engine = make_engine(url, read_only=True)


def _collected_after(fn: Callable[..., Any], *args: Any) -> bytes:
    """In the helper process: a task, with the garbage collector held off until it is done (`collected_after`),
    its result pickled within (`Helper.result` reads it): a chunk or a batch, whose objects a collection as it
    was sent would walk while they are all alive."""
    with collected_after():
        return pickle.dumps(fn(*args), protocol=pickle.HIGHEST_PROTOCOL)


class Helper:
    """One helper process, started when first given work."""

    def __init__(self, url: str | None, name: str) -> None:
        self._url = url  # the database's, with its password, for a helper that reads it; None for one that does not
        self._name = name  # what it does, for the log
        self._pool: ProcessPoolExecutor | None = None
        self._shares: dict[str, float] = {}
        self.broken = False

    def share(self, work: str, first: float) -> float:
        """The part of each batch of `work` (`first` at first) the helper takes when the worker splits one with
        it: how fast each side goes depends on the machine, the database and what else runs, so it is learnt
        (see `balance`)."""
        return self._shares.setdefault(work, first)

    @property
    def shares(self) -> dict[str, float]:
        """The shares learnt so far, by work."""
        return dict(self._shares)

    def balance(self, work: str, future: Future[Any] | None) -> None:
        """Called when the worker, done with its own part of a batch of `work`, turns to the helper's: a helper
        already done was idle while the worker worked, and takes a larger share of the next batch; one still at
        it keeps the worker waiting, and takes a smaller one. A task that failed says nothing of its share (the
        worker redoes that part itself)."""
        if future is None or work not in self._shares:
            return
        if future.done() and (future.cancelled() or future.exception() is not None):
            return
        step = SHARE_STEP if future.done() else -SHARE_STEP
        low, high = SHARE_BOUNDS
        self._shares[work] = min(high, max(low, self._shares[work] + step))

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T] | None:
        """`fn(*args)` run in the helper; None when there is no helper (given up, or it could not start)."""
        if self.broken:
            return None
        try:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_started, initargs=(self._url,))
            return cast(Future[T], self._pool.submit(_collected_after, fn, *args))
        except Exception:  # it died since its last task, could not be started, or the arguments did not pickle
            self._give_up(wait=True)
            return None

    def result(self, future: Future[T] | None) -> T | None:
        """What the helper returned; None when it failed (the worker then does the work itself)."""
        if future is None or future.cancelled():  # cancelled: handed over before the helper was given up
            return None
        try:
            # What `_collected_after` pickled, read here, in the caller's unit of work (where the collector
            # waits), not as it arrives.
            return cast(T, pickle.loads(cast(bytes, future.result(timeout=HELPER_SECONDS))))
        except (BrokenExecutor, TimeoutError, pickle.PicklingError):
            self._give_up(wait=False)  # a helper that hangs is left to end on its own
        except Exception:  # this task failed in the helper: the worker does it, and says why if it must
            log.warning("the helper process %s could not do its part; the worker does it itself", self._name,
                        exc_info=True)
        return None

    def _give_up(self, *, wait: bool) -> None:
        log.warning("the helper process %s failed; the worker does its work itself from now on", self._name,
                    exc_info=True)
        self.broken = True
        self.close(wait=wait)

    def close(self, *, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None
