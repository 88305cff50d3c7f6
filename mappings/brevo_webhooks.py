"""Brevo's webhooks, as far as consent goes: an unsubscribe, a hard bounce or a spam complaint on email, a STOP
on SMS. Pure: payload in, opt-out out (or None for an event that says nothing about consent)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mappings.identity import normalise_email, normalise_phone
from mappings.shopify import PayloadError

# Brevo's marketing and transactional webhooks spell the same events differently.
EMAIL_OPT_OUTS = {"unsubscribe": "unsubscribed", "unsubscribed": "unsubscribed", "hard_bounce": "hard_bounce",
                  "hardbounce": "hard_bounce", "spam": "spam", "complaint": "spam"}
SMS_OPT_OUTS = {"unsubscribe": "stop", "unsubscribed": "stop", "stop": "stop", "sms_unsubscribe": "stop"}
_PHONE_KEYS = ("phone_number", "sms", "phone", "to", "number")


@dataclass(frozen=True)
class BrevoOptOut:
    channel: str  # email | sms
    reason: str  # unsubscribed | hard_bounce | spam | stop
    address: str  # the normalised email, or the phone in E.164
    occurred_at: datetime | None
    reference: str  # Brevo's ids of the event: a redelivery has the same

    @property
    def topic(self) -> str:
        return f"brevo/{self.channel}_{self.reason}"

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> BrevoOptOut | None:
        """The opt-out a Brevo webhook reports; None for events that are not one (opens, clicks, deliveries).
        Raises PayloadError for an opt-out without an address."""
        event = str(payload.get("event") or "").strip().lower()
        phone = next((str(payload[k]) for k in _PHONE_KEYS if payload.get(k)), None)
        email = payload.get("email")
        if event not in EMAIL_OPT_OUTS and event not in SMS_OPT_OUTS:
            return None
        at = _moment(payload)
        reference = ":".join(str(payload.get(k) or "") for k in ("id", "camp_id", "message-id", "ts_event", "ts"))
        if email and event in EMAIL_OPT_OUTS:
            address = normalise_email(str(email))
            if address is None:
                raise PayloadError(f"'{email}' is not an email address")
            return cls("email", EMAIL_OPT_OUTS[event], address, at, reference)
        if phone and event in SMS_OPT_OUTS:
            digits = phone.strip()
            number = normalise_phone(digits if digits.startswith(("+", "00")) else f"+{digits}")
            if number is None:
                raise PayloadError(f"'{phone}' is not a phone number")
            return cls("sms", SMS_OPT_OUTS[event], number, at, reference)
        raise PayloadError(f"a '{event}' event without an email or phone number")


def _moment(payload: Mapping[str, Any]) -> datetime | None:
    for key in ("ts_event", "ts", "ts_epoch"):
        value = payload.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            seconds = value / 1000 if key == "ts_epoch" else value
            return datetime.fromtimestamp(seconds, UTC)
    return None
