"""Benchmark: RFM thresholds and scores for one shop of 100,000 buyers.

Run by hand:  .venv/bin/python bench/rfm.py [--buyers 100000] [--repeats 5] [--seed 20260401]

Builds the buyers once (seeded, so every run measures the same shop), then times thresholds() plus
score() for every buyer, the daily recompute's pure work, `--repeats` times. Prints each run, the median
seconds and the median microseconds per contact. Target: the whole script well under 20 s on 2 cores.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mappings.rfm import RfmInput, RfmScore, score, thresholds

NOW = datetime(2026, 4, 1, tzinfo=UTC)


def random_buyers(count: int, seed: int) -> list[RfmInput]:
    """A plausible shop: most buyers ordered once, a long tail of regulars, spend roughly per order."""
    rng = random.Random(seed)
    buyers = []
    for _ in range(count):
        orders = min(1 + int(rng.expovariate(0.6)), 200)
        cents = sum(int(rng.lognormvariate(8.3, 0.8)) for _ in range(min(orders, 20)))
        last_order_at = NOW - timedelta(seconds=rng.randrange(0, 3 * 365 * 86_400))
        buyers.append(RfmInput(last_order_at=last_order_at, order_count=orders,
                               total_spent=Decimal(cents).scaleb(-2)))
    return buyers


def run_once(buyers: list[RfmInput]) -> list[RfmScore]:
    t = thresholds(buyers, NOW)
    assert t is not None
    return [score(b, t, NOW) for b in buyers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buyers", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=20260401)
    args = parser.parse_args()

    started = time.perf_counter()
    buyers = random_buyers(args.buyers, args.seed)
    print(f"built {len(buyers):,} buyers in {time.perf_counter() - started:.2f} s")

    timings = []
    scores: list[RfmScore] = []
    for run in range(1, args.repeats + 1):
        started = time.perf_counter()
        scores = run_once(buyers)
        elapsed = time.perf_counter() - started
        timings.append(elapsed)
        print(f"run {run}: {elapsed:.3f} s")

    median = statistics.median(timings)
    print(f"median: {median:.3f} s for thresholds + {len(buyers):,} scores, "
          f"{median / len(buyers) * 1e6:.2f} us per contact")
    # A sanity line, so a broken scorer that is merely fast does not go unnoticed.
    segments = Counter(s.segment for s in scores)
    print("segments: " + ", ".join(f"{name} {n:,}" for name, n in segments.most_common()))


if __name__ == "__main__":
    main()
