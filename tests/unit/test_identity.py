"""Buyers are recognised by customer id, then email, then phone; phones leave as E.164 or not at all."""

from __future__ import annotations

import pytest

from mappings.identity import contact_key_for, normalise_email, normalise_phone


@pytest.mark.parametrize(("raw", "country", "expected"), [
    ("+14155550123", None, "+14155550123"),
    ("(415) 555-0123", "US", "+14155550123"),
    ("06 12 34 56 78", "FR", "+33612345678"),
    ("0033612345678", None, "+33612345678"),
    ("123", "US", None),
    ("(415) 555-0123", None, None),  # no country code and no country: cannot be normalised
    ("", "US", None),
])
def test_phone_numbers_become_e164_using_the_address_country(raw: str, country: str | None,
                                                             expected: str | None) -> None:
    assert normalise_phone(raw, country) == expected


def test_emails_are_trimmed_and_lower_cased_and_junk_is_dropped() -> None:
    assert normalise_email("  Ana.Silva@Example.COM ") == "ana.silva@example.com"
    assert normalise_email("not-an-email") is None


def test_contact_key_prefers_customer_id_then_email_then_phone() -> None:
    assert contact_key_for(customer_id=5, email="a@example.com", phone="+14155550123") == "c:5"
    assert contact_key_for(customer_id=None, email="a@example.com", phone="+14155550123") == "e:a@example.com"
    assert contact_key_for(customer_id=None, email=None, phone="+14155550123") == "p:+14155550123"
    with pytest.raises(ValueError):
        contact_key_for(customer_id=None, email=None, phone=None)
