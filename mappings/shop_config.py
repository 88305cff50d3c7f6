"""A shop's own mapping to Brevo: attribute names, enabled events, lifecycle timings and segment lists.

Every shop works with no configuration at all. What a merchant configures arrives as TOML (a file given to
the CLI) or as the JSON dict stored in the database; both go through `ShopConfig.from_dict`, so a stored
configuration is never trusted more than a typed one.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar

ATTRIBUTE_NAMES: tuple[str, ...] = (
    "FIRSTNAME", "LASTNAME", "SMS", "SHOPIFY_CUSTOMER_ID", "ORDER_COUNT", "TOTAL_SPENT", "AVERAGE_ORDER_VALUE",
    "FIRST_ORDER_DATE", "LAST_ORDER_DATE", "LAST_ORDER_NUMBER", "CURRENCY", "CART_URL", "CART_VALUE",
    "AVERAGE_DAYS_BETWEEN_ORDERS", "PREDICTED_NEXT_ORDER_DATE", "FAVORITE_CATEGORY", "FAVORITE_VENDOR",
    "LAST_PRODUCT_TITLE", "LAST_PRODUCT_URL", "LAST_PRODUCT_IMAGE", "CATEGORIES_PURCHASED", "DISCOUNT_SHARE",
    "SUBSCRIPTION_BUYER", "CUSTOMER_TAGS", "COUNTRY", "CITY", "LANGUAGE", "RFM_SCORE", "RFM_SEGMENT",
    "LOYALTY_POINTS", "LOYALTY_TIER", "LOYALTY_NEXT_TIER", "LOYALTY_POINTS_TO_NEXT_TIER", "LOYALTY_POINTS_EXPIRE_AT",
    "LOYALTY_REWARD_CODE",
)

EVENT_NAMES: tuple[str, ...] = (
    "customer_created", "checkout_started", "cart_updated", "order_completed", "order_fulfilled",
    "order_cancelled", "order_refunded", "first_order_completed", "repeat_order_completed", "cart_abandoned",
    "cart_recovered", "winback_due", "replenishment_due", "review_request_due", "segment_changed",
    "vip_entered", "birthday", "loyalty_points_earned", "loyalty_points_reversed", "loyalty_tier_changed",
    "loyalty_reward_issued", "loyalty_points_expiring", "loyalty_points_expired",
)

# Duplicated on purpose from the RFM module: mappings stay importable without the scoring code.
SEGMENT_NAMES: tuple[str, ...] = (
    "Champions", "Loyal", "Potential Loyalist", "New", "Promising", "Needs Attention", "At Risk", "Can't Lose",
    "Hibernating", "Lost",
)

# Brevo's own attributes: Brevo knows them by these names, so they may not be renamed or disabled.
REQUIRED_ATTRIBUTES = frozenset({"FIRSTNAME", "LASTNAME", "SMS"})

# EMAIL is the contact's identifier in Brevo: writing another value into it would change whose contact it is.
_RESERVED_BREVO_NAMES = frozenset({"EMAIL"})

_BREVO_ATTRIBUTE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,49}")
_TOML_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SECTIONS = ("attributes", "events", "lifecycle", "segments", "privacy", "consent")

# Per channel, where consent is decided: "both" (an opt-out in Brevo is written to Shopify too) or "shopify"
# (Shopify alone: Brevo's opt-outs stay in Brevo and in the consent history).
CONSENT_SOURCES = ("both", "shopify")

# What a customer's erasure (Shopify's customers/redact) does to their Brevo contact.
REDACT_IN_BREVO = ("delete", "anonymise")

_V = TypeVar("_V")


class ConfigError(ValueError):
    """The shop configuration is invalid; the message names the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class LifecycleSettings:
    abandoned_cart_minutes: int = 60
    winback_days: int = 60  # the shop's default; a buyer's own rhythm may bring it forward
    review_request_days: int = 7  # counted from fulfilment
    rfm_recompute_hours: int = 24
    count_test_orders: bool = False


# Inclusive bounds. Below them a merchant would spam buyers or overload the scheduler; above, nothing happens.
_LIFECYCLE_RANGES: dict[str, tuple[int, int]] = {
    "abandoned_cart_minutes": (5, 10080),
    "winback_days": (14, 730),
    "review_request_days": (1, 90),
    "rfm_recompute_hours": (1, 168),
}


def _frozen_mapping(value: Mapping[str, Any]) -> MappingProxyType[str, Any]:
    # Copy first: a proxy over the caller's dict would change when they change it.
    return MappingProxyType(dict(value))


@dataclass(frozen=True, kw_only=True)
class ShopConfig:
    renamed: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # canonical -> Brevo name
    disabled_attributes: frozenset[str] = frozenset()
    disabled_events: frozenset[str] = frozenset()
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    segment_lists: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # segment -> list id
    redact_in_brevo: str = "delete"  # privacy.redact_in_brevo: one of REDACT_IN_BREVO
    consent: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # channel -> CONSENT_SOURCES

    def __post_init__(self) -> None:
        object.__setattr__(self, "renamed", _frozen_mapping(self.renamed))
        object.__setattr__(self, "segment_lists", _frozen_mapping(self.segment_lists))
        object.__setattr__(self, "consent", _frozen_mapping(self.consent))
        object.__setattr__(self, "disabled_attributes", frozenset(self.disabled_attributes))
        object.__setattr__(self, "disabled_events", frozenset(self.disabled_events))

    def __hash__(self) -> int:
        # Mapping proxies are not hashable; hash the same content the generated __eq__ compares.
        return hash((frozenset(self.renamed.items()), self.disabled_attributes, self.disabled_events,
                     self.lifecycle, frozenset(self.segment_lists.items()), self.redact_in_brevo,
                     frozenset(self.consent.items())))

    @classmethod
    def default(cls) -> ShopConfig:
        return cls()

    @classmethod
    def from_toml(cls, text: str) -> ShopConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:  # its message carries the line and column
            raise ConfigError("(file)", f"invalid TOML: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ShopConfig:
        if data is None:
            return cls.default()
        if not isinstance(data, Mapping):
            raise ConfigError("(config)", f"must be a table, not {_type_name(data)}")
        for section in data:
            if section not in _SECTIONS:
                raise ConfigError(_key(section), f"unknown section {section!r}; expected one of "
                                  f"{', '.join(_SECTIONS)}{_suggestion(section, _SECTIONS)}")
        renamed, disabled_attributes = _parse_attributes(_section(data, "attributes"))
        return cls(
            renamed=renamed,
            disabled_attributes=disabled_attributes,
            disabled_events=_parse_events(_section(data, "events")),
            lifecycle=_parse_lifecycle(_section(data, "lifecycle")),
            segment_lists=_parse_segments(_section(data, "segments")),
            redact_in_brevo=_parse_privacy(_section(data, "privacy")),
            consent=_parse_consent(_section(data, "consent")),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form, in the TOML shape, holding only what differs from the defaults.

        Values left at their default are not stored, so a shop that never chose one follows the product's
        default if it later changes.
        """
        data: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        for name in ATTRIBUTE_NAMES:
            if name in self.disabled_attributes:
                attributes[name] = False
            elif name in self.renamed:
                attributes[name] = self.renamed[name]
        if attributes:
            data["attributes"] = attributes
        events = {name: False for name in EVENT_NAMES if name in self.disabled_events}
        if events:
            data["events"] = events
        default = LifecycleSettings()
        lifecycle = {f.name: getattr(self.lifecycle, f.name) for f in fields(LifecycleSettings)
                     if getattr(self.lifecycle, f.name) != getattr(default, f.name)}
        if lifecycle:
            data["lifecycle"] = lifecycle
        segments = {name: self.segment_lists[name] for name in SEGMENT_NAMES if name in self.segment_lists}
        if segments:
            data["segments"] = segments
        if self.redact_in_brevo != "delete":
            data["privacy"] = {"redact_in_brevo": self.redact_in_brevo}
        consent = {channel: source for channel, source in sorted(self.consent.items()) if source != "both"}
        if consent:
            data["consent"] = consent
        return data

    def consent_to_shopify(self) -> frozenset[str]:
        """The channels whose opt-outs in Brevo are written to Shopify."""
        return frozenset(c for c in ("email", "sms") if self.consent.get(c, "both") == "both")

    def brevo_name(self, canonical: str) -> str | None:
        """The name the attribute has in this shop's Brevo account; None when disabled. Unknown names pass."""
        if canonical in self.disabled_attributes:
            return None
        return self.renamed.get(canonical, canonical)

    def apply(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """Canonical attributes -> this shop's Brevo attributes: renamed, disabled ones dropped."""
        return self._rename(attributes)

    def event_enabled(self, name: str) -> bool:
        return name not in self.disabled_events

    def attribute_types(self, canonical_types: Mapping[str, str]) -> dict[str, str]:
        """{Brevo name: Brevo type} of the enabled attributes, to create them in the shop's Brevo account."""
        return self._rename(canonical_types)

    def _rename(self, values: Mapping[str, _V]) -> dict[str, _V]:
        if not self.renamed and not self.disabled_attributes:  # most shops: every name is its own
            renamed = {name: value for name, value in values.items() if name in ATTRIBUTE_NAMES}
        else:
            renamed = {}
            for name, value in values.items():
                if name in ATTRIBUTE_NAMES and (brevo := self.brevo_name(name)) is not None:
                    renamed[brevo] = value
        # An unknown key that happens to equal a renamed attribute's new name must not overwrite it.
        for name, value in values.items():
            if name not in ATTRIBUTE_NAMES:
                renamed.setdefault(name, value)
        return renamed


def _key(*parts: str) -> str:
    """A dotted TOML path; keys that are not bare TOML keys are quoted, as TOML would."""
    return ".".join(part if _TOML_BARE_KEY.fullmatch(part) else json.dumps(part) for part in parts)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"


def _suggestion(name: object, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(name, str):
        return ""
    # Case slips (total_spent for TOTAL_SPENT) are not "close" to difflib, so look for them first.
    folded = {choice.casefold(): choice for choice in choices}
    match = folded.get(name.casefold()) or next(iter(difflib.get_close_matches(name, choices, n=1)), None)
    return f"; did you mean {match!r}?" if match else ""


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = data.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(_key(name), f"must be a table, not {_type_name(section)}")
    return section


def _check_known(section: str, name: object, choices: tuple[str, ...], what: str) -> str:
    if not isinstance(name, str) or name not in choices:
        raise ConfigError(_key(section, str(name)), f"unknown {what} {name!r}{_suggestion(name, choices)}")
    return name


def _parse_attributes(section: Mapping[str, Any]) -> tuple[dict[str, str], frozenset[str]]:
    renamed: dict[str, str] = {}
    disabled: set[str] = set()
    for name, value in section.items():
        canonical = _check_known("attributes", name, ATTRIBUTE_NAMES, "attribute")
        key = _key("attributes", canonical)
        if value is True:
            continue
        if value is False:
            if canonical in REQUIRED_ATTRIBUTES:
                raise ConfigError(key, f"{canonical} is Brevo's own attribute and cannot be disabled")
            disabled.add(canonical)
            continue
        if not isinstance(value, str):
            raise ConfigError(key, f"must be false (disable), true (keep) or a new name, not {_type_name(value)}")
        new_name = value.strip().upper()
        if not _BREVO_ATTRIBUTE_NAME.fullmatch(new_name):
            raise ConfigError(key, f"{value!r} is not a valid Brevo attribute name: letters A-Z, digits and "
                              "underscores, starting with a letter, at most 50 characters")
        if new_name == canonical:
            continue
        if canonical in REQUIRED_ATTRIBUTES:
            raise ConfigError(key, f"{canonical} is Brevo's own attribute and cannot be renamed")
        if new_name in _RESERVED_BREVO_NAMES:
            raise ConfigError(key, f"{new_name} is reserved by Brevo for the contact's identifier")
        renamed[canonical] = new_name
    _check_renames_are_distinct(renamed, disabled)
    return renamed, frozenset(disabled)


def _check_renames_are_distinct(renamed: Mapping[str, str], disabled: set[str]) -> None:
    # Checked after the whole section is read: whether a name is taken depends on keys that may come later.
    taken: dict[str, str] = {}
    for canonical, new_name in renamed.items():
        if canonical in disabled:
            continue
        key = _key("attributes", canonical)
        if new_name in ATTRIBUTE_NAMES and new_name not in disabled:
            # Brevo already holds that attribute's values (and type) under this name: the two would mix.
            raise ConfigError(key, f"{new_name!r} is the name of the enabled attribute {new_name}; "
                              f"disable {new_name} first to reuse its name")
        if new_name in taken:
            raise ConfigError(key, f"{new_name!r} is already the new name of {taken[new_name]}")
        taken[new_name] = canonical


def _parse_events(section: Mapping[str, Any]) -> frozenset[str]:
    disabled: set[str] = set()
    for name, value in section.items():
        event = _check_known("events", name, EVENT_NAMES, "event")
        if not isinstance(value, bool):
            raise ConfigError(_key("events", event), f"must be true or false, not {_type_name(value)}")
        if not value:
            disabled.add(event)
    return frozenset(disabled)


def _parse_lifecycle(section: Mapping[str, Any]) -> LifecycleSettings:
    known = tuple(f.name for f in fields(LifecycleSettings))
    values: dict[str, Any] = {}
    for name, value in section.items():
        setting = _check_known("lifecycle", name, known, "setting")
        key = _key("lifecycle", setting)
        if setting in _LIFECYCLE_RANGES:
            low, high = _LIFECYCLE_RANGES[setting]
            # bool is an int subclass: `true` for a number of days is a mistake, not 1.
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(key, f"must be an integer from {low} to {high}, not {_type_name(value)}")
            if not low <= value <= high:
                raise ConfigError(key, f"must be from {low} to {high}, not {value}")
        elif not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, not {_type_name(value)}")
        values[setting] = value
    return LifecycleSettings(**values)


def _parse_consent(section: Mapping[str, Any]) -> dict[str, str]:
    sources: dict[str, str] = {}
    for name, value in section.items():
        channel = _check_known("consent", name, ("email", "sms"), "channel")
        if value not in CONSENT_SOURCES:
            raise ConfigError(_key("consent", channel), f"must be one of {', '.join(map(repr, CONSENT_SOURCES))}, "
                              f"not {value!r}")
        sources[channel] = str(value)
    return sources


def _parse_privacy(section: Mapping[str, Any]) -> str:
    mode = "delete"
    for name, value in section.items():
        setting = _check_known("privacy", name, ("redact_in_brevo",), "setting")
        if value not in REDACT_IN_BREVO:
            raise ConfigError(_key("privacy", setting), f"must be one of {', '.join(map(repr, REDACT_IN_BREVO))}, "
                              f"not {value!r}")
        mode = str(value)
    return mode


def _parse_segments(section: Mapping[str, Any]) -> dict[str, int]:
    lists: dict[str, int] = {}
    segment_of: dict[int, str] = {}
    for name, value in section.items():
        segment = _check_known("segments", name, SEGMENT_NAMES, "segment")
        key = _key("segments", segment)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            shown = value if isinstance(value, int) and not isinstance(value, bool) else _type_name(value)
            raise ConfigError(key, f"must be a Brevo list id (an integer above 0), not {shown}")
        if value in segment_of:
            # A contact leaves the list when leaving a segment: two segments on one list would fight over it.
            raise ConfigError(key, f"list {value} is already the list of segment {segment_of[value]!r}")
        segment_of[value] = segment
        lists[segment] = value
    return lists
