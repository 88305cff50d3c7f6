"""The helper process a worker shares work with (`sync.helper`)."""

from __future__ import annotations

import gc
from concurrent.futures import Future

import pytest

from sync.helper import SHARE_BOUNDS, SHARE_STEP, Helper


def _future(done: bool) -> Future[None]:
    future: Future[None] = Future()
    if done:
        future.set_result(None)
    return future


def test_a_helper_done_before_the_worker_takes_more_of_the_next_batch_and_one_still_busy_less() -> None:
    helper = Helper(None, "testing")
    assert helper.share("views", 0.45) == 0.45
    helper.balance("views", _future(done=True))  # it waited for the worker
    assert helper.share("views", 0.45) == pytest.approx(0.45 + SHARE_STEP)
    helper.balance("views", _future(done=False))  # the worker waits for it
    helper.balance("views", _future(done=False))
    assert helper.share("views", 0.45) == pytest.approx(0.45 - SHARE_STEP)
    assert helper.share("figures", 0.3) == 0.3  # each kind of work is balanced on its own


def test_a_helper_share_stays_within_its_bounds() -> None:
    helper = Helper(None, "testing")
    helper.share("views", 0.5)
    for _ in range(100):
        helper.balance("views", _future(done=True))
    assert helper.share("views", 0.5) == SHARE_BOUNDS[1]
    for _ in range(100):
        helper.balance("views", _future(done=False))
    assert helper.share("views", 0.5) == SHARE_BOUNDS[0]


def test_a_helper_task_that_failed_leaves_its_share_as_it_was() -> None:
    helper = Helper(None, "testing")
    helper.share("views", 0.45)
    failed: Future[None] = Future()
    failed.set_exception(RuntimeError("the helper could not read its part"))
    cancelled: Future[None] = Future()
    cancelled.cancel()
    helper.balance("views", failed)  # done first, but the worker redoes that part itself
    helper.balance("views", cancelled)
    assert helper.share("views", 0.45) == 0.45


def test_a_helper_process_collects_garbage_as_the_worker_does() -> None:
    from connector.runtime import tune_gc

    helper = Helper(None, "testing")
    try:
        before = gc.get_threshold()
        tune_gc()
        worker = gc.get_threshold()
        gc.set_threshold(*before)
        assert helper.result(helper.submit(gc.get_threshold)) == worker
    finally:
        helper.close()


def test_a_helper_task_runs_with_the_collector_held_off() -> None:
    helper = Helper(None, "testing")
    try:
        assert helper.result(helper.submit(gc.isenabled)) is False  # its result pickled, on again (`collected_after`)
    finally:
        helper.close()


def test_a_block_holds_the_collector_off_and_leaves_it_as_it_found_it() -> None:
    from connector.runtime import collected_after

    assert gc.isenabled()
    with pytest.raises(RuntimeError), collected_after():
        assert not gc.isenabled()
        with collected_after():  # within a block: as it found it (off)
            assert not gc.isenabled()
        assert not gc.isenabled()
        raise RuntimeError("a chunk failed")
    assert gc.isenabled()  # on again, even when the block failed
    gc.disable()
    try:
        with collected_after():
            pass
        assert not gc.isenabled()  # off before: off after
    finally:
        gc.enable()
