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
        for top, value in data.items():
            keys = sorted(k for s, k in _KEYS.values() if s == top)
            if (None, top) in _KEYS.values():
                continue
            if not keys:
                sections = sorted({s or k for s, k in _KEYS.values()})
                raise ConfigError(top, f"unknown section (expected one of {', '.join(sections)})")
            if not isinstance(value, Mapping):
                raise ConfigError(top, "must be a table")
            for key in value:
                if key not in keys:
                    raise ConfigError(f"{top}.{key}", f"unknown key (expected one of {', '.join(keys)})")
        defaults, values = cls(), dict[str, Any]()
        for field_name, (section, key) in _KEYS.items():
            table = data.get(section, {}) if section else data
            if key not in table:
                continue
            raw, name, default = table[key], f"{section}.{key}" if section else key, getattr(defaults, field_name)
            if field_name == "tiers":
                values[field_name] = _levels(raw)
            elif field_name == "tier_measure":
                if raw not in TIER_MEASURES:
                    raise ConfigError(name, f"must be one of {', '.join(TIER_MEASURES)}")
                values[field_name] = raw
            elif isinstance(default, bool):
                values[field_name] = _bool(raw, name)
            elif isinstance(default, int):
                values[field_name] = _count(raw, name)
            else:
                values[field_name] = _decimal(raw, name)
        rules = cls(**values)
        if rules.reward_every_points <= 0:
            raise ConfigError("rewards.every_points", "must be at least 1")
        return rules

    def to_dict(self) -> dict[str, Any]:
        """The stored form; `from_dict(to_dict())` gives the same rules."""
        out: dict[str, Any] = {}
        for field_name, (section, key) in _KEYS.items():
            value = getattr(self, field_name)
            if field_name == "tiers":
                value = [{"name": t.name, "threshold": t.threshold, "multiplier": str(t.multiplier)} for t in value]
            elif isinstance(value, Decimal):
                value = str(value)
            (out.setdefault(section, {}) if section else out)[key] = value
        return out

    @property
    def uniform_multiplier(self) -> bool:
        """Every tier earns at the same rate: an order's points do not depend on the tier at that moment."""
        return len({t.multiplier for t in self.tiers}) == 1

    def tier_for(self, measure: Decimal | int) -> Tier:
        for tier in reversed(self.tiers):
            if measure >= tier.threshold:
                return tier
        return self.tiers[0]

    def next_tier(self, tier: Tier) -> Tier | None:
        later = [t for t in self.tiers if t.threshold > tier.threshold]
        return later[0] if later else None


# Where each rule lives in the TOML: (section or None for the top level, key). The dotted key names errors.
_KEYS: dict[str, tuple[str | None, str]] = {
    "enabled": (None, "enabled"),
    "points_per_unit": ("earn", "points_per_unit"),
    "signup_bonus": ("earn", "signup_bonus"),
    "first_order_bonus": ("earn", "first_order_bonus"),
    "birthday_bonus": ("earn", "birthday_bonus"),
    "count_test_orders": ("earn", "count_test_orders"),
    "tier_measure": ("tiers", "measure"),
    "tier_grace_days": ("tiers", "grace_days"),
    "tiers": ("tiers", "levels"),
    "expiry_months": ("expiry", "months"),
    "expiry_warning_days": ("expiry", "warning_days"),
    "reward_every_points": ("rewards", "every_points"),
    "reward_value": ("rewards", "value"),
    "reward_automatic": ("rewards", "automatic"),
}


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, "must be true or false")
    return value


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(name, "must be a whole number, 0 or more")
    return value


def _decimal(value: Any, name: str) -> Decimal:
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
        tiers.append(Tier(name.strip(), _count(level.get("threshold", -1), f"{key}.threshold"),
                          _decimal(level.get("multiplier", Decimal("1")), f"{key}.multiplier")))
    if tiers[0].threshold != 0:
        raise ConfigError("tiers.levels[0].threshold", "the first tier must start at 0")
    for i in range(1, len(tiers)):
        if tiers[i].threshold <= tiers[i - 1].threshold:
            raise ConfigError(f"tiers.levels[{i}].threshold", "thresholds must increase")
    if len({t.name for t in tiers}) != len(tiers):
        raise ConfigError("tiers.levels", "tier names must be different")
    return tuple(tiers)
