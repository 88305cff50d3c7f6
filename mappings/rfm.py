"""RFM scores (recency, frequency, monetary, each 1-5) and the segment they put a buyer in, per shop.

The scores are quintiles over one shop's buyers: contacts with at least one counted order (cancelled
and test orders do not count, totals are net of refunds; see mappings.profile).

Cut points. For each dimension take the buyers' values sorted ascending, v[0..n-1], and keep four
nearest-rank quintiles c_k = v[ceil(k*n/5) - 1] for k = 1..4. The recency value is the number of days
between the buyer's last order and `now`, fractional, as a Decimal quantized to 0.001 (half up), and
never negative: an order stamped after `now` (clock skew) counts as 0 days.

Scores. F = 1 + the number of frequency cut points strictly below the buyer's order count; M likewise
on total spent; R = 5 - the number of recency cut points strictly below the buyer's days, because fewer
days means more recent. Counting only cut points *strictly* below means buyers with equal values always
get equal scores, every score is in 1..5, and nothing depends on the order the buyers came in. A shop
with one buyer scores them R=5, F=1, M=1: "New".

Thresholds are recomputed daily and stored; a buyer who changes in between is scored against the
stored thresholds, with their own recency measured at the `now` of the scoring, not of the thresholds.

Segment. FM = (F + M) / 2 rounded half up, and (R, FM) picks the segment from SEGMENT_TABLE:

    Champions           R 5     FM 4-5
    Loyal               R 3-4   FM 4-5
    Potential Loyalist  R 4-5   FM 2-3
    New                 R 5     FM 1
    Promising           R 4     FM 1
    Needs Attention     R 3     FM 3
    At Risk             R 1-2   FM 3-4
    Can't Lose          R 1-2   FM 5
    Hibernating         R 2-3   FM 1-2
    Lost                R 1     FM 1-2

Every one of the 25 (R, FM) cells belongs to exactly one segment; the module refuses to import otherwise.
RfmScore.code ("545": R, F, M) is the Brevo attribute RFM_SCORE. Invalid input raises ValueError naming
the field.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, TypeVar

SEGMENTS: tuple[str, ...] = (
    "Champions",
    "Loyal",
    "Potential Loyalist",
    "New",
    "Promising",
    "Needs Attention",
    "At Risk",
    "Can't Lose",
    "Hibernating",
    "Lost",
)
VIP_SEGMENT = "Champions"

SCORES = range(1, 6)


class SegmentRule(NamedTuple):
    """One row of the segment table; both ranges are inclusive (low, high)."""

    segment: str
    recency: tuple[int, int]
    fm: tuple[int, int]


SEGMENT_TABLE: tuple[SegmentRule, ...] = (
    SegmentRule("Champions", recency=(5, 5), fm=(4, 5)),
    SegmentRule("Loyal", recency=(3, 4), fm=(4, 5)),
    SegmentRule("Potential Loyalist", recency=(4, 5), fm=(2, 3)),
    SegmentRule("New", recency=(5, 5), fm=(1, 1)),
    SegmentRule("Promising", recency=(4, 4), fm=(1, 1)),
    SegmentRule("Needs Attention", recency=(3, 3), fm=(3, 3)),
    SegmentRule("At Risk", recency=(1, 2), fm=(3, 4)),
    SegmentRule("Can't Lose", recency=(1, 2), fm=(5, 5)),
    SegmentRule("Hibernating", recency=(2, 3), fm=(1, 2)),
    SegmentRule("Lost", recency=(1, 1), fm=(1, 2)),
)


def _cells(table: Sequence[SegmentRule]) -> dict[tuple[int, int], str]:
    """The (R, FM) -> segment lookup; a gap or an overlap in the table is a bug, so refuse it at import."""
    cells: dict[tuple[int, int], str] = {}
    for rule in table:
        for r in range(rule.recency[0], rule.recency[1] + 1):
            for fm in range(rule.fm[0], rule.fm[1] + 1):
                if (r, fm) in cells:
                    raise ValueError(f"segment table: (R={r}, FM={fm}) is both {cells[(r, fm)]} and {rule.segment}")
                cells[(r, fm)] = rule.segment
    missing = [(r, fm) for r in SCORES for fm in SCORES if (r, fm) not in cells]
    if missing or len(cells) != len(SCORES) ** 2:
        raise ValueError(f"segment table: cells {missing} have no segment or cells fall outside 1..5")
    return cells


_SEGMENT_BY_CELL = _cells(SEGMENT_TABLE)

# Milli-days in integer microseconds: recency is rounded with integer arithmetic, exact and context-free.
_MICROSECONDS_PER_MILLIDAY = 86_400_000
_MILLIDAY = Decimal("0.001")


def _require_aware(value: datetime, field: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} must be a timezone-aware datetime, got {value!r}")


def _require_money(value: Decimal, field: str) -> None:
    # A float here would already have lost cents; refuse it rather than guess.
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{field} must be a finite Decimal, got {value!r}")
    if value < 0:
        raise ValueError(f"{field} must be >= 0, got {value}")


def _require_count(value: int, field: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{field} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class RfmInput:
    last_order_at: datetime  # tz-aware (UTC in practice; any offset is compared as an instant)
    order_count: int  # counted orders, >= 1
    total_spent: Decimal  # net of refunds, shop currency, >= 0

    def __post_init__(self) -> None:
        _require_aware(self.last_order_at, "last_order_at")
        _require_count(self.order_count, "order_count", 1)
        _require_money(self.total_spent, "total_spent")


def _days_since(last_order_at: datetime, now: datetime) -> Decimal:
    elapsed = now - last_order_at
    microseconds = max((elapsed.days * 86_400 + elapsed.seconds) * 1_000_000 + elapsed.microseconds, 0)
    millidays = (microseconds + _MICROSECONDS_PER_MILLIDAY // 2) // _MICROSECONDS_PER_MILLIDAY  # half up
    return Decimal(millidays).scaleb(-3)


T = TypeVar("T", int, Decimal)
Four = tuple[T, T, T, T]


def _cut_points(values: list[T]) -> Four[T]:
    """Nearest-rank quintiles c_k = v[ceil(k*n/5) - 1], k = 1..4, of non-empty `values`."""
    values.sort()
    n = len(values)
    c1, c2, c3, c4 = (values[-(-k * n // 5) - 1] for k in (1, 2, 3, 4))
    return (c1, c2, c3, c4)


def _check_cut_points(values: tuple[Any, ...], field: str, check: Callable[[Any, str], None]) -> None:
    if not isinstance(values, tuple) or len(values) != 4:
        raise ValueError(f"{field} must be a tuple of 4 cut points, got {values!r}")
    for index, value in enumerate(values):
        check(value, f"{field}[{index}]")
    if any(a > b for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{field} must be non-decreasing, got {[str(v) for v in values]}")


@dataclass(frozen=True, kw_only=True)
class RfmThresholds:
    """Four ascending cut points per dimension, computed over one shop's buyers at one moment."""

    computed_at: datetime
    recency_days: tuple[Decimal, Decimal, Decimal, Decimal]  # days since last order, quantized to 0.001
    frequency: tuple[int, int, int, int]
    monetary: tuple[Decimal, Decimal, Decimal, Decimal]
    buyers: int

    def __post_init__(self) -> None:
        _require_aware(self.computed_at, "computed_at")
        _check_cut_points(self.recency_days, "recency_days", _require_money)
        _check_cut_points(self.frequency, "frequency", lambda v, f: _require_count(v, f, 1))
        _check_cut_points(self.monetary, "monetary", _require_money)
        _require_count(self.buyers, "buyers", 1)

    def to_json(self) -> dict[str, Any]:
        """JSON-able: Decimals as strings (no float ever touches money), computed_at as ISO 8601."""
        return {
            "computed_at": self.computed_at.isoformat(),
            "recency_days": [str(v) for v in self.recency_days],
            "frequency": list(self.frequency),
            "monetary": [str(v) for v in self.monetary],
            "buyers": self.buyers,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RfmThresholds:
        """The inverse of to_json; stored data that does not fit raises ValueError saying which field."""
        if not isinstance(data, Mapping):
            raise ValueError(f"RFM thresholds must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("computed_at", "recency_days", "frequency", "monetary", "buyers") if k not in data]
        if missing:
            raise ValueError(f"RFM thresholds are missing {', '.join(missing)}")
        computed_at = data["computed_at"]
        if not isinstance(computed_at, str):
            raise ValueError(f"computed_at must be an ISO 8601 string, got {computed_at!r}")
        try:
            parsed_at = datetime.fromisoformat(computed_at)
        except ValueError:
            raise ValueError(f"computed_at is not an ISO 8601 datetime: {computed_at!r}") from None
        return cls(
            computed_at=parsed_at,
            recency_days=_four(data["recency_days"], "recency_days", _decimal),
            frequency=_four(data["frequency"], "frequency", _integer),
            monetary=_four(data["monetary"], "monetary", _decimal),
            buyers=_integer(data["buyers"], "buyers"),
        )


def _decimal(value: Any, field: str) -> Decimal:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a decimal string, got {value!r}")
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{field} is not a decimal number: {value!r}") from None


def _integer(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an integer, got {value!r}")
    return value


def _four(values: Any, field: str, parse: Callable[[Any, str], T]) -> Four[T]:
    if not isinstance(values, list | tuple) or len(values) != 4:
        raise ValueError(f"{field} must be a list of 4 cut points, got {values!r}")
    a, b, c, d = (parse(v, f"{field}[{i}]") for i, v in enumerate(values))
    return (a, b, c, d)


@dataclass(frozen=True, kw_only=True)
class RfmScore:
    recency: int
    frequency: int
    monetary: int

    def __post_init__(self) -> None:
        for field in ("recency", "frequency", "monetary"):
            if getattr(self, field) not in SCORES:
                raise ValueError(f"{field} score must be 1..5, got {getattr(self, field)!r}")

    @property
    def fm(self) -> int:
        """(F + M) / 2 rounded half up: a half always goes to the better score."""
        return (self.frequency + self.monetary + 1) // 2

    @property
    def code(self) -> str:
        """R, F and M digits, e.g. "545": the Brevo attribute RFM_SCORE."""
        return f"{self.recency}{self.frequency}{self.monetary}"

    @property
    def segment(self) -> str:
        return segment_for(self.recency, self.fm)


def thresholds(buyers: Iterable[RfmInput], now: datetime) -> RfmThresholds | None:
    """Cut points over a shop's buyers at `now`; None when the shop has no buyers yet."""
    _require_aware(now, "now")
    recency: list[Decimal] = []
    frequency: list[int] = []
    monetary: list[Decimal] = []
    for buyer in buyers:
        recency.append(_days_since(buyer.last_order_at, now))
        frequency.append(buyer.order_count)
        monetary.append(buyer.total_spent)
    if not recency:
        return None
    return RfmThresholds(
        computed_at=now,
        recency_days=_cut_points(recency),
        frequency=_cut_points(frequency),
        monetary=_cut_points(monetary),
        buyers=len(recency),
    )


def score(buyer: RfmInput, t: RfmThresholds, now: datetime) -> RfmScore:
    """The buyer's R, F and M against `t`; recency is measured at `now`, which may be later than t.computed_at."""
    _require_aware(now, "now")
    # bisect_left counts the cut points strictly below the value, so ties share a score.
    return RfmScore(
        recency=5 - bisect_left(t.recency_days, _days_since(buyer.last_order_at, now)),
        frequency=1 + bisect_left(t.frequency, buyer.order_count),
        monetary=1 + bisect_left(t.monetary, buyer.total_spent),
    )


def segment_for(recency: int, fm: int) -> str:
    """The segment of SEGMENT_TABLE holding the (R, FM) cell."""
    if recency not in SCORES:
        raise ValueError(f"recency must be 1..5, got {recency!r}")
    if fm not in SCORES:
        raise ValueError(f"fm must be 1..5, got {fm!r}")
    return _SEGMENT_BY_CELL[(recency, fm)]

