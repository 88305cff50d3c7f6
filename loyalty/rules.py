"""A shop's loyalty rules: earning, tiers, expiry and rewards. Defaults work unconfigured.

Rules arrive as TOML (a file given to the CLI) or as the dict stored with the shop; both go through
`LoyaltyRules.from_dict`, which refuses anything it does not understand with the dotted key and the reason.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from mappings.shop_config import ConfigError

TIER_MEASURES = ("rolling_12_months", "lifetime_points", "spend_12_months", "calendar_year")


@dataclass(frozen=True)
class Tier:
    name: str
    threshold: int  # measure needed to reach the tier
    multiplier: Decimal = Decimal("1")  # earning rate while in the tier


DEFAULT_TIERS = (Tier("Bronze", 0), Tier("Silver", 500), Tier("Gold", 1500), Tier("Platinum", 5000))


@dataclass(frozen=True)
class LoyaltyRules:
    enabled: bool = True
    points_per_unit: Decimal = Decimal("1")  # per unit of shop currency of the subtotal after discounts
    signup_bonus: int = 50
    first_order_bonus: int = 50
    birthday_bonus: int = 100
    count_test_orders: bool = False
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    tier_measure: str = "rolling_12_months"
    tier_grace_days: int = 90  # a tier reached is kept at least this long
    expiry_months: int = 12  # after the buyer's last order; 0: points never expire
    expiry_warning_days: int = 30
    reward_every_points: int = 500
    reward_value: Decimal = Decimal("5.00")  # in shop currency
    reward_automatic: bool = False  # issue a code when the balance crosses the threshold

    @classmethod
    def from_toml(cls, text: str) -> LoyaltyRules:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("(file)", f"not valid TOML: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LoyaltyRules:
        data = dict(data or {})
        known = {"enabled", "earn", "tiers", "expiry", "rewards"}
        for key in data:
            if key not in known:
                raise ConfigError(key, f"unknown section (expected one of {', '.join(sorted(known))})")
        earn = _section(data, "earn", {"points_per_unit", "signup_bonus", "first_order_bonus", "birthday_bonus",
                                        "count_test_orders"})
        tiers = _section(data, "tiers", {"measure", "grace_days", "levels"})
        expiry = _section(data, "expiry", {"months", "warning_days"})
        rewards = _section(data, "rewards", {"every_points", "value", "automatic"})
        defaults = cls()
        levels = _levels(tiers.get("levels")) if "levels" in tiers else defaults.tiers
        measure = tiers.get("measure", defaults.tier_measure)
        if measure not in TIER_MEASURES:
            raise ConfigError("tiers.measure", f"must be one of {', '.join(TIER_MEASURES)}")
        rules = cls(
            enabled=_bool(data, "enabled", defaults.enabled, "enabled"),
            points_per_unit=_decimal(earn, "points_per_unit", defaults.points_per_unit, "earn.points_per_unit"),
            signup_bonus=_count(earn, "signup_bonus", defaults.signup_bonus, "earn.signup_bonus"),
            first_order_bonus=_count(earn, "first_order_bonus", defaults.first_order_bonus, "earn.first_order_bonus"),
            birthday_bonus=_count(earn, "birthday_bonus", defaults.birthday_bonus, "earn.birthday_bonus"),
            count_test_orders=_bool(earn, "count_test_orders", defaults.count_test_orders, "earn.count_test_orders"),
            tiers=levels, tier_measure=measure,
            tier_grace_days=_count(tiers, "grace_days", defaults.tier_grace_days, "tiers.grace_days"),
            expiry_months=_count(expiry, "months", defaults.expiry_months, "expiry.months"),
            expiry_warning_days=_count(expiry, "warning_days", defaults.expiry_warning_days, "expiry.warning_days"),
            reward_every_points=_count(rewards, "every_points", defaults.reward_every_points, "rewards.every_points"),
            reward_value=_decimal(rewards, "value", defaults.reward_value, "rewards.value"),
            reward_automatic=_bool(rewards, "automatic", defaults.reward_automatic, "rewards.automatic"),
        )
        if rules.reward_every_points <= 0:
            raise ConfigError("rewards.every_points", "must be at least 1")
        return rules

    def to_dict(self) -> dict[str, Any]:
        """The stored form; `from_dict(to_dict())` gives the same rules."""
        return {
            "enabled": self.enabled,
            "earn": {"points_per_unit": str(self.points_per_unit), "signup_bonus": self.signup_bonus,
                     "first_order_bonus": self.first_order_bonus, "birthday_bonus": self.birthday_bonus,
                     "count_test_orders": self.count_test_orders},
            "tiers": {"measure": self.tier_measure, "grace_days": self.tier_grace_days,
                      "levels": [{"name": t.name, "threshold": t.threshold, "multiplier": str(t.multiplier)}
                                 for t in self.tiers]},
            "expiry": {"months": self.expiry_months, "warning_days": self.expiry_warning_days},
            "rewards": {"every_points": self.reward_every_points, "value": str(self.reward_value),
                        "automatic": self.reward_automatic},
        }

    def tier_for(self, measure: Decimal | int) -> Tier:
        reached = [t for t in self.tiers if measure >= t.threshold]
        return reached[-1] if reached else self.tiers[0]

    def next_tier(self, tier: Tier) -> Tier | None:
        later = [t for t in self.tiers if t.threshold > tier.threshold]
        return later[0] if later else None


def _section(data: Mapping[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(name, "must be a table")
    for key in section:
        if key not in keys:
            raise ConfigError(f"{name}.{key}", f"unknown key (expected one of {', '.join(sorted(keys))})")
    return dict(section)


def _bool(data: Mapping[str, Any], key: str, default: bool, name: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(name, "must be true or false")
    return value


def _count(data: Mapping[str, Any], key: str, default: int, name: str) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(name, "must be a whole number, 0 or more")
    return value


def _decimal(data: Mapping[str, Any], key: str, default: Decimal, name: str) -> Decimal:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ConfigError(name, "must be a number")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise ConfigError(name, "must be a number") from exc
    if not number.is_finite() or number < 0:
        raise ConfigError(name, "must be a number, 0 or more")
    return number


def _levels(value: Any) -> tuple[Tier, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("tiers.levels", "must be a non-empty list of {name, threshold[, multiplier]}")
    tiers = []
    for i, level in enumerate(value):
        key = f"tiers.levels[{i}]"
        if not isinstance(level, Mapping) or set(level) - {"name", "threshold", "multiplier"}:
            raise ConfigError(key, "must have name, threshold and optionally multiplier")
        name = level.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{key}.name", "must be a non-empty text")
        tiers.append(Tier(name.strip(), _count(level, "threshold", -1, f"{key}.threshold"),
                          _decimal(level, "multiplier", Decimal("1"), f"{key}.multiplier")))
    if tiers[0].threshold != 0:
        raise ConfigError("tiers.levels[0].threshold", "the first tier must start at 0")
    for i in range(1, len(tiers)):
        if tiers[i].threshold <= tiers[i - 1].threshold:
            raise ConfigError(f"tiers.levels[{i}].threshold", "thresholds must increase")
    if len({t.name for t in tiers}) != len(tiers):
        raise ConfigError("tiers.levels", "tier names must be different")
    return tuple(tiers)
