"""RFM cut points, scores and segments: a hand-computed shop, every cell of the segment table, properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappings.rfm import (
    SEGMENT_TABLE,
    SEGMENTS,
    VIP_SEGMENT,
    RfmInput,
    RfmScore,
    RfmThresholds,
    score,
    segment_for,
    thresholds,
)

NOW = datetime(2026, 4, 1, tzinfo=UTC)


def _buyer(days: float, orders: int, spent: str) -> RfmInput:
    return RfmInput(last_order_at=NOW - timedelta(days=days), order_count=orders, total_spent=Decimal(spent))


def _thresholds(buyers: list[RfmInput], now: datetime = NOW) -> RfmThresholds:
    t = thresholds(buyers, now)
    assert t is not None
    return t


# A shop of ten buyers, one per segment. n = 10, so the cut points are v[ceil(2k) - 1] = v[1], v[3], v[5], v[7].
#
#   days sorted:   0.5  2  5.25  9  14  30  45  120  200  365   -> cuts 2, 9, 30, 120
#   orders sorted: 1  1  1  2  2  3  3  4  9  12                -> cuts 1, 2, 3, 4
#   spent sorted:  0  25  25  48.50  90  120  310  365.40  1250  1890.75
#                                                               -> cuts 25, 48.50, 120, 365.40
#
# R = 5 - #cuts strictly below days; F = 1 + #cuts strictly below orders; M likewise on spent;
# FM = (F + M + 1) // 2.
#
#        days  orders  spent     R  F  M  FM  code  segment
#   A    0.5   9       1890.75   5  5  5  5   555   Champions            (no cut below 0.5; 4 below 9; 4 below)
#   B    2     1       25.00     5  1  1  1   511   New                  (2 is a cut, not below itself)
#   C    5.25  2       120.00    4  2  3  3   423   Potential Loyalist   (2 < 5.25; 1 < 2; 25, 48.50 < 120)
#   D    9     1       25.00     4  1  1  1   411   Promising            (only 2 < 9)
#   E    14    3       90.00     3  3  3  3   333   Needs Attention      (2, 9 < 14; 1, 2 < 3; 25, 48.50 < 90)
#   F    30    4       310.00    3  4  4  4   344   Loyal                (2, 9 < 30; 1, 2, 3 < 4; 3 cuts < 310)
#   G    45    12      1250.00   2  5  5  5   255   Can't Lose           (2, 9, 30 < 45)
#   H    120   2       48.50     2  2  2  2   222   Hibernating          (120 is a cut: 3 below)
#   I    200   1       0.00      1  1  1  1   111   Lost                 (all 4 below 200; nothing below 0)
#   J    365   3       365.40    1  3  4  4   134   At Risk              (F+M = 7 -> 3.5 rounds up to 4)
TEN_BUYERS = {
    "A": (_buyer(0.5, 9, "1890.75"), "555", "Champions"),
    "B": (_buyer(2, 1, "25.00"), "511", "New"),
    "C": (_buyer(5.25, 2, "120.00"), "423", "Potential Loyalist"),
    "D": (_buyer(9, 1, "25.00"), "411", "Promising"),
    "E": (_buyer(14, 3, "90.00"), "333", "Needs Attention"),
    "F": (_buyer(30, 4, "310.00"), "344", "Loyal"),
    "G": (_buyer(45, 12, "1250.00"), "255", "Can't Lose"),
    "H": (_buyer(120, 2, "48.50"), "222", "Hibernating"),
    "I": (_buyer(200, 1, "0.00"), "111", "Lost"),
    "J": (_buyer(365, 3, "365.40"), "134", "At Risk"),
}


def test_ten_buyer_shop_cut_points_are_the_nearest_rank_quintiles() -> None:
    t = _thresholds([b for b, _, _ in TEN_BUYERS.values()])
    assert t.computed_at == NOW
    assert t.buyers == 10
    assert t.recency_days == (Decimal("2.000"), Decimal("9.000"), Decimal("30.000"), Decimal("120.000"))
    assert t.frequency == (1, 2, 3, 4)
    assert t.monetary == (Decimal("25.00"), Decimal("48.50"), Decimal("120.00"), Decimal("365.40"))


@pytest.mark.parametrize("name", sorted(TEN_BUYERS))
def test_ten_buyer_shop_scores_each_buyer_as_computed_by_hand(name: str) -> None:
    t = _thresholds([b for b, _, _ in TEN_BUYERS.values()])
    buyer, code, segment = TEN_BUYERS[name]
    result = score(buyer, t, NOW)
    assert result.code == code
    assert result.segment == segment


def test_ten_buyer_shop_covers_every_segment() -> None:
    assert sorted(segment for _, _, segment in TEN_BUYERS.values()) == sorted(SEGMENTS)


def test_fm_is_the_mean_of_f_and_m_rounded_half_up() -> None:
    assert RfmScore(recency=1, frequency=3, monetary=4).fm == 4
    assert RfmScore(recency=1, frequency=1, monetary=2).fm == 2
    assert RfmScore(recency=1, frequency=2, monetary=4).fm == 3
    assert RfmScore(recency=1, frequency=5, monetary=5).fm == 5


def test_code_is_r_f_m_digits() -> None:
    assert RfmScore(recency=5, frequency=4, monetary=5).code == "545"


# The table of the product spec, cell by cell: rows are R = 5 (top) down to 1, columns FM = 1..5.
SPEC_GRID = {
    5: ("New", "Potential Loyalist", "Potential Loyalist", "Champions", "Champions"),
    4: ("Promising", "Potential Loyalist", "Potential Loyalist", "Loyal", "Loyal"),
    3: ("Hibernating", "Hibernating", "Needs Attention", "Loyal", "Loyal"),
    2: ("Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose"),
    1: ("Lost", "Lost", "At Risk", "At Risk", "Can't Lose"),
}


@pytest.mark.parametrize(("recency", "fm"), [(r, fm) for r in range(1, 6) for fm in range(1, 6)])
def test_segment_for_matches_the_spec_in_every_cell(recency: int, fm: int) -> None:
    assert segment_for(recency, fm) == SPEC_GRID[recency][fm - 1]


def test_segment_table_covers_all_25_cells_exactly_once() -> None:
    cells = [
        (r, fm)
        for rule in SEGMENT_TABLE
        for r in range(rule.recency[0], rule.recency[1] + 1)
        for fm in range(rule.fm[0], rule.fm[1] + 1)
    ]
    assert sorted(cells) == [(r, fm) for r in range(1, 6) for fm in range(1, 6)]


def test_segment_table_names_every_segment_once_in_the_published_order() -> None:
    assert tuple(rule.segment for rule in SEGMENT_TABLE) == SEGMENTS
    assert VIP_SEGMENT == "Champions"


@pytest.mark.parametrize(("recency", "fm", "field"), [(0, 3, "recency"), (6, 3, "recency"), (3, 0, "fm"),
                                                      (3, 6, "fm")])
def test_segment_for_refuses_scores_outside_1_to_5(recency: int, fm: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        segment_for(recency, fm)


def test_a_shop_with_no_buyers_has_no_thresholds() -> None:
    assert thresholds([], NOW) is None


def test_a_shop_with_one_buyer_scores_them_new() -> None:
    buyer = _buyer(40, 7, "999.00")
    result = score(buyer, _thresholds([buyer]), NOW)
    assert (result.recency, result.frequency, result.monetary) == (5, 1, 1)
    assert result.segment == "New"


def test_identical_buyers_all_get_the_same_score() -> None:
    buyers = [_buyer(10, 3, "150.00") for _ in range(7)]
    t = _thresholds(buyers)
    # Every cut point equals the common value and none is strictly below it.
    assert {score(b, t, NOW).code for b in buyers} == {"511"}


def test_two_buyers_split_into_the_top_and_the_bottom_half() -> None:
    # n = 2: cut indexes ceil(2k/5) - 1 = 0, 0, 1, 1, so the cut points are (low, low, high, high).
    best, other = _buyer(1, 5, "500.00"), _buyer(60, 1, "20.00")
    t = _thresholds([other, best])
    assert t.frequency == (1, 1, 5, 5)
    # best: 0 recency cuts below -> R 5; 2 below -> F 3, M 3; FM 3 -> Potential Loyalist.
    assert score(best, t, NOW).code == "533"
    assert score(best, t, NOW).segment == "Potential Loyalist"
    # other: 2 recency cuts below 60 -> R 3; none below -> F 1, M 1 -> Hibernating.
    assert score(other, t, NOW).code == "311"
    assert score(other, t, NOW).segment == "Hibernating"


def test_huge_totals_are_ranked_exactly_and_survive_json() -> None:
    huge = Decimal("123456789012345678901234567890.12")
    buyers = [_buyer(1, 1, str(huge)), _buyer(1, 1, str(huge + Decimal("0.01"))), _buyer(1, 1, "1.00")]
    t = _thresholds(buyers)
    # n = 3: cut indexes ceil(3k/5) - 1 = 0, 1, 1, 2.
    assert t.monetary == (Decimal("1.00"), huge, huge, huge + Decimal("0.01"))
    # huge: 1.00 below -> 2; huge + 0.01: three cuts below, itself is the fourth -> 4; 1.00: none below -> 1.
    assert [score(b, t, NOW).monetary for b in buyers] == [2, 4, 1]
    assert RfmThresholds.from_json(json.loads(json.dumps(t.to_json()))) == t


def test_zero_total_spent_scores_the_lowest_monetary() -> None:
    buyers = [_buyer(1, 1, "0.00"), _buyer(2, 1, "0"), _buyer(3, 2, "10.00")]
    t = _thresholds(buyers)
    # Cuts (0, 0, 0, 10): nothing is below a zero; 10.00 has three cuts below it.
    assert t.monetary == (Decimal("0.00"), Decimal("0"), Decimal("0"), Decimal("10.00"))
    assert [score(b, t, NOW).monetary for b in buyers] == [1, 1, 4]


def test_a_shop_where_nobody_spent_anything_scores_everyone_m_1() -> None:
    buyers = [_buyer(d, 1, "0.00") for d in range(1, 6)]
    t = _thresholds(buyers)
    assert {score(b, t, NOW).monetary for b in buyers} == {1}


def test_recency_is_quantized_to_a_thousandth_of_a_day_half_up() -> None:
    half_a_milliday = timedelta(seconds=43.2)
    t = _thresholds([RfmInput(last_order_at=NOW - half_a_milliday, order_count=1, total_spent=Decimal("1"))])
    assert t.recency_days[0] == Decimal("0.001")
    t = _thresholds([RfmInput(last_order_at=NOW - timedelta(seconds=43), order_count=1, total_spent=Decimal("1"))])
    assert t.recency_days[0] == Decimal("0.000")


def test_an_order_after_now_counts_as_zero_days_not_negative() -> None:
    future = RfmInput(last_order_at=NOW + timedelta(hours=3), order_count=1, total_spent=Decimal("1"))
    t = _thresholds([future, _buyer(10, 1, "1")])
    assert t.recency_days[0] == Decimal("0")
    assert score(future, t, NOW).recency == 5


def test_a_buyer_scored_later_against_stored_thresholds_measures_recency_at_the_later_now() -> None:
    t = _thresholds([b for b, _, _ in TEN_BUYERS.values()])
    buyer_b = TEN_BUYERS["B"][0]
    # Three days later B is 5 days out: past the 2-day cut, short of the 9-day one.
    assert score(buyer_b, t, NOW + timedelta(days=3)).recency == 4


def test_other_timezones_are_compared_as_instants() -> None:
    from datetime import timezone

    paris = timezone(timedelta(hours=2))
    buyer = RfmInput(last_order_at=datetime(2026, 4, 1, 2, tzinfo=paris), order_count=1, total_spent=Decimal("1"))
    assert _thresholds([buyer]).recency_days[0] == Decimal("0")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"order_count": 0}, "order_count"),
        ({"order_count": -3}, "order_count"),
        ({"total_spent": Decimal("-0.01")}, "total_spent"),
        ({"total_spent": Decimal("NaN")}, "total_spent"),
        ({"total_spent": 12.5}, "total_spent"),
        ({"last_order_at": datetime(2026, 3, 1)}, "last_order_at"),
    ],
)
def test_invalid_buyer_input_is_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    values: dict[str, Any] = {"last_order_at": NOW, "order_count": 1, "total_spent": Decimal("1.00")} | fields
    with pytest.raises(ValueError, match=field):
        RfmInput(**values)


def test_a_naive_now_is_refused() -> None:
    buyer = _buyer(1, 1, "1")
    with pytest.raises(ValueError, match="now"):
        thresholds([buyer], datetime(2026, 4, 1))
    with pytest.raises(ValueError, match="now"):
        score(buyer, _thresholds([buyer]), datetime(2026, 4, 1))


def test_to_json_holds_strings_for_decimals_and_iso_for_the_moment() -> None:
    t = _thresholds([b for b, _, _ in TEN_BUYERS.values()])
    assert t.to_json() == {
        "computed_at": "2026-04-01T00:00:00+00:00",
        "recency_days": ["2.000", "9.000", "30.000", "120.000"],
        "frequency": [1, 2, 3, 4],
        "monetary": ["25.00", "48.50", "120.00", "365.40"],
        "buyers": 10,
    }


GOOD_JSON: dict[str, Any] = {
    "computed_at": "2026-04-01T00:00:00+00:00",
    "recency_days": ["2.000", "9.000", "30.000", "120.000"],
    "frequency": [1, 2, 3, 4],
    "monetary": ["25.00", "48.50", "120.00", "365.40"],
    "buyers": 10,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"computed_at": None}, "computed_at"),
        ({"computed_at": "yesterday"}, "computed_at"),
        ({"computed_at": "2026-04-01T00:00:00"}, "computed_at"),
        ({"recency_days": ["2", "9", "30"]}, "recency_days"),
        ({"recency_days": ["2", "9", "30", "soon"]}, r"recency_days\[3\]"),
        ({"recency_days": ["9", "2", "30", "120"]}, "recency_days must be non-decreasing"),
        ({"recency_days": ["-1", "2", "30", "120"]}, r"recency_days\[0\]"),
        ({"frequency": [1, 2, 3, "4"]}, r"frequency\[3\]"),
        ({"frequency": [0, 2, 3, 4]}, r"frequency\[0\]"),
        ({"frequency": "1234"}, "frequency"),
        ({"monetary": [25.0, 48.5, 120.0, 365.4]}, r"monetary\[0\] must be a decimal string"),
        ({"monetary": ["25", "48.5", "Infinity", "365.4"]}, r"monetary\[2\]"),
        ({"buyers": 0}, "buyers"),
        ({"buyers": True}, "buyers"),
    ],
)
def test_from_json_refuses_bad_data_saying_which_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RfmThresholds.from_json(GOOD_JSON | change)


def test_from_json_names_missing_fields() -> None:
    data = {k: v for k, v in GOOD_JSON.items() if k not in ("monetary", "buyers")}
    with pytest.raises(ValueError, match="missing monetary, buyers"):
        RfmThresholds.from_json(data)


def test_from_json_refuses_something_that_is_not_an_object() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        RfmThresholds.from_json(["not", "an", "object"])  # type: ignore[arg-type]


# Properties.

INSTANTS = st.datetimes(min_value=datetime(2016, 1, 1), max_value=datetime(2026, 6, 1), timezones=st.just(UTC))
BUYERS = st.builds(
    RfmInput,
    last_order_at=INSTANTS,
    order_count=st.integers(min_value=1, max_value=500),
    total_spent=st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False),
)
SHOPS = st.lists(BUYERS, min_size=1, max_size=60)


@given(SHOPS)
def test_every_score_is_between_1_and_5_and_has_a_segment(buyers: list[RfmInput]) -> None:
    t = _thresholds(buyers)
    for buyer in buyers:
        result = score(buyer, t, NOW)
        assert {result.recency, result.frequency, result.monetary, result.fm} <= {1, 2, 3, 4, 5}
        assert result.segment in SEGMENTS


@given(SHOPS, st.randoms(use_true_random=False))
def test_shuffling_the_buyers_changes_neither_thresholds_nor_scores(buyers: list[RfmInput], rng: Any) -> None:
    shuffled = list(buyers)
    rng.shuffle(shuffled)
    t, t_shuffled = _thresholds(buyers), _thresholds(shuffled)
    assert t == t_shuffled
    assert [score(b, t, NOW) for b in buyers] == [score(b, t_shuffled, NOW) for b in buyers]


@given(SHOPS, BUYERS, st.integers(min_value=1, max_value=500))
def test_more_orders_never_lowers_frequency(buyers: list[RfmInput], buyer: RfmInput, more: int) -> None:
    busier = RfmInput(last_order_at=buyer.last_order_at, order_count=buyer.order_count + more,
                      total_spent=buyer.total_spent)
    t = _thresholds([*buyers, buyer, busier])
    assert score(busier, t, NOW).frequency >= score(buyer, t, NOW).frequency


@given(SHOPS, BUYERS, st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3000)))
def test_a_more_recent_order_never_lowers_recency(buyers: list[RfmInput], buyer: RfmInput, sooner: timedelta) -> None:
    recent = RfmInput(last_order_at=buyer.last_order_at + sooner, order_count=buyer.order_count,
                      total_spent=buyer.total_spent)
    t = _thresholds([*buyers, buyer, recent])
    assert score(recent, t, NOW).recency >= score(buyer, t, NOW).recency


@given(SHOPS, BUYERS, st.decimals(min_value=Decimal("0.01"), max_value=10**6, places=2))
def test_spending_more_never_lowers_monetary(buyers: list[RfmInput], buyer: RfmInput, extra: Decimal) -> None:
    richer = RfmInput(last_order_at=buyer.last_order_at, order_count=buyer.order_count,
                      total_spent=buyer.total_spent + extra)
    t = _thresholds([*buyers, buyer, richer])
    assert score(richer, t, NOW).monetary >= score(buyer, t, NOW).monetary


@given(SHOPS, INSTANTS)
def test_thresholds_round_trip_through_json(buyers: list[RfmInput], now: datetime) -> None:
    t = _thresholds(buyers, now)
    assert RfmThresholds.from_json(json.loads(json.dumps(t.to_json()))) == t
