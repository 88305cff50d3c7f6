"""Simulated Shopify store: a seeded store history sent as signed Shopify webhooks.

`SimulatedStore` plays a store's life (catalogue, sign-ups, consent, carts, checkouts, orders,
payments, fulfilments, refunds, cancellations, profile edits) as a discrete-event simulation and
records every webhook Shopify would send for it, with payloads shaped like API version 2026-01
(see ../shared/fixtures/shopify/ for the real samples they follow). `many_orders` streams
`orders/create` bodies for benchmarks, `LargeStore` is a store of any size for backfill benchmarks
(objects rebuilt from their index, bulk files written in advance), and `WebhookSender` posts
deliveries the way Shopify does.

Deliberate departures from the real payloads, so that nothing in the sandbox is a float:
`tax_lines[].rate` and `refund_line_items[].subtotal` / `total_tax` are decimal strings
("0.0725", "19.99"); Shopify sends them as JSON numbers. Read them with `Decimal(str(x))`.
The shop's clock is fixed at UTC-05:00 (no DST) so output does not depend on the host's tz data.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import heapq
import hmac
import itertools
import json
import os
import random
import tempfile
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from typing import Any, NamedTuple

import httpx
import orjson

from connector.sandbox.shopify_bulk import NESTED, BulkFile, Consents
from connector.sandbox.shopify_bulk import write as write_bulk

__all__ = [
    "API_VERSION",
    "FX_RATES",
    "BuyerTotals",
    "ExpectedTotals",
    "LargeStore",
    "LazyObjects",
    "SimulatedStore",
    "StoreSize",
    "WebhookDelivery",
    "WebhookSender",
    "many_orders",
    "sign_webhook",
]

JSON = dict[str, Any]

API_VERSION = "2026-01"
SHOP_CURRENCY = "USD"
# Shopify renders shop-side timestamps in the shop's zone; a fixed offset keeps runs identical on any host.
SHOP_TZ = timezone(timedelta(hours=-5))
CENT = Decimal("0.01")
ZERO = Decimal("0.00")
# Fixed conversion rates (1 USD = x), so presentment amounts are reproducible and hand-checkable.
FX_RATES: dict[str, Decimal] = {
    "USD": Decimal("1"),
    "EUR": Decimal("0.92"),
    "GBP": Decimal("0.79"),
    "CAD": Decimal("1.36"),
    "AUD": Decimal("1.52"),
}

_SECOND = 1000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
# The whole history fits in 90 days: sessions stop at day 70 and their follow-ups (payment,
# fulfilment, refund) land before day 90, so a default store ends about "now".
_HISTORY_DAYS = 90
_LAST_SESSION_DAY = 70
_MANY_ORDERS_MAX_BODY = 8_800


# ---------------------------------------------------------------------------------------------
# Deliveries and signatures
# ---------------------------------------------------------------------------------------------


def sign_webhook(body: bytes, secret: str) -> str:
    """X-Shopify-Hmac-Sha256: base64 of the HMAC-SHA256 of the raw body, keyed by the app secret."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, kw_only=True)
class WebhookDelivery:
    """One webhook as Shopify posts it: the topic, the exact signed body and the identifying headers."""

    topic: str
    body: bytes
    event_id: str
    webhook_id: str
    triggered_at: str

    def headers(self, *, shop_domain: str, secret: str, api_version: str = API_VERSION) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Shopify-Topic": self.topic,
            "X-Shopify-Hmac-Sha256": sign_webhook(self.body, secret),
            "X-Shopify-Shop-Domain": shop_domain,
            "X-Shopify-API-Version": api_version,
            "X-Shopify-Webhook-Id": self.webhook_id,
            "X-Shopify-Event-Id": self.event_id,
            "X-Shopify-Triggered-At": self.triggered_at,
        }

    def payload(self) -> JSON:
        parsed: JSON = json.loads(self.body)
        return parsed

    def redelivered(self, attempt: int = 1) -> WebhookDelivery:
        """The same event sent again: same event id and body, a new (deterministic) webhook id."""
        webhook_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.webhook_id}/retry/{attempt}"))
        return replace(self, webhook_id=webhook_id)


_CONSENT_TOPICS = frozenset({"customers_email_marketing_consent/update", "customers_marketing_consent/update"})


def _dumps(payload: JSON) -> bytes:
    # Compact UTF-8 like Shopify's bodies. A Decimal left in a payload fails loudly here; floats are
    # never made (amounts are Decimal, rendered by _s).
    return orjson.dumps(payload)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# ---------------------------------------------------------------------------------------------
# Store configuration and expected figures
# ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class StoreSize:
    customers: int = 200  # registered customers
    guests: int = 40  # buyers who order without an account (order has email/phone, customer null)
    products: int = 30
    orders_per_customer: float = 2.0  # average; some have 0, some 10+
    abandoned_share: float = 0.25  # share of checkouts never completed
    refund_share: float = 0.08
    cancel_share: float = 0.04
    test_order_share: float = 0.01  # orders with "test": true
    foreign_currency_share: float = 0.1  # presentment currency differs from shop currency (shop: USD)


class BuyerTotals(NamedTuple):
    order_count: int
    total_spent: Decimal  # shop currency, net of refunds


@dataclass(frozen=True, kw_only=True)
class ExpectedTotals:
    """What a correct connector must conclude from the deliveries, computed from the simulation's own ledger.

    Counted orders exclude cancelled and test orders. Every email that appears on any order is a key
    (a buyer whose only orders were cancelled or tests has (0, 0.00)); customers who never ordered are
    not. Phone-only guests (order email null) are keyed by their phone as typed in `phone_buyers`.
    """

    buyers: dict[str, BuyerTotals]
    phone_buyers: dict[str, BuyerTotals]
    abandoned_checkouts: int  # not completed and with email, phone or customer
    abandoned_cart_tokens: frozenset[str]
    orders: int  # all orders, test and cancelled included
    counted_orders: int
    revenue: Decimal  # sum of total_spent over all buyers


# ---------------------------------------------------------------------------------------------
# Money, time and identifiers
# ---------------------------------------------------------------------------------------------


def _q(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def _s(amount: Decimal) -> str:
    text = f"{_q(amount):.2f}"
    return "0.00" if text == "-0.00" else text


def _conv(amount: Decimal, currency: str) -> Decimal:
    return _q(amount * FX_RATES[currency])


def _money(amount: Decimal, currency: str) -> JSON:
    return {"amount": _s(amount), "currency_code": currency}


def _money_set(shop: Decimal, presentment: Decimal, currency: str) -> JSON:
    return {"shop_money": _money(shop, SHOP_CURRENCY), "presentment_money": _money(presentment, currency)}


def _ts(ms: int) -> str:
    """Shop-side timestamp as Shopify writes it: seconds and the shop's offset."""
    return datetime.fromtimestamp(ms // 1000, SHOP_TZ).isoformat()


def _utc_ms(ms: int) -> str:
    """UTC with milliseconds, as in carts payloads and X-Shopify-Triggered-At."""
    moment = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _epoch_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000


def _default_start() -> datetime:
    # Midnight, so two stores built the same day with the same seed are identical.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=_HISTORY_DAYS)


def _gid(kind: str, ident: int) -> str:
    return f"gid://shopify/{kind}/{ident}"


def _hex(rng: random.Random, chars: int = 32) -> str:
    return f"{rng.getrandbits(chars * 4):0{chars}x}"


class _IdSequence:
    """Ids that grow with time but are not contiguous, like Shopify's; all stay below 2**53."""

    def __init__(self, rng: random.Random, base: int, gap: int) -> None:
        self._rng = rng
        self._gap = gap
        self._last = base + rng.randrange(gap * 100)

    def __call__(self) -> int:
        self._last += self._rng.randint(1, self._gap)
        return self._last


# An object built apart from the others (a `LargeStore` order and everything in it) draws each kind of id from its
# own slot of the range: a start below 400 in the slot, then steps of at most 4, leave room for 400 ids of a kind.
_ID_SLOT = 2_000
_ID_SLOT_GAP = 4


class _Ids:
    def __init__(self, rng: random.Random, *, slot: int | None = None) -> None:
        """`slot`: the ids of object number `slot`, built on its own; objects built in any order never share one."""

        def sequence(base: int, gap: int) -> _IdSequence:
            if slot is None:
                return _IdSequence(rng, base, gap)
            return _IdSequence(rng, base + slot * _ID_SLOT, _ID_SLOT_GAP)

        self.customer = sequence(7_012_000_000_000, 50_000)
        self.address = sequence(8_915_000_000_000, 50_000)
        self.product = sequence(8_123_000_000_000, 500_000)
        self.variant = sequence(45_123_000_000_000, 200_000)
        self.inventory_item = sequence(47_302_000_000_000, 200_000)
        self.option = sequence(10_456_000_000_000, 200_000)
        self.image = sequence(37_201_000_000_000, 200_000)
        self.order = sequence(5_912_000_000_000, 90_000)
        self.line_item = sequence(14_234_000_000_000, 90_000)
        self.shipping_line = sequence(4_812_000_000_000, 90_000)
        self.checkout = sequence(35_612_000_000_000, 90_000)
        self.refund = sequence(912_000_000_000, 90_000)
        self.refund_line = sequence(502_000_000_000, 90_000)
        self.adjustment = sequence(231_000_000_000, 90_000)
        self.transaction = sequence(6_812_000_000_000, 90_000)
        self.fulfillment = sequence(5_123_000_000_000, 90_000)


# ---------------------------------------------------------------------------------------------
# People and places
# ---------------------------------------------------------------------------------------------

_FIRST_NAMES = (
    "Ana", "Lucas", "Sofia", "Liam", "Emma", "Noah", "Olivia", "Mateo", "Chloé", "Léa", "Hugo", "Louis",
    "Camille", "Jonas", "Lena", "Felix", "Mia", "Lukas", "Hannah", "Jack", "Amelia", "Oliver", "Isla",
    "George", "Charlotte", "Harry", "Priya", "Arjun", "Mei", "Wei", "Yuki", "Haruto", "Fatima", "Omar",
    "Zoë", "Noé", "Björn", "Siobhan", "Aoife", "Chinedu", "Amara", "Diego", "Valentina", "Grace",
    "Ethan", "Ava", "William", "Isabella", "James", "Nora", "Elias", "Clara", "Maximilian", "Jürgen",
    "Renée", "François", "Ève", "Kai", "Leilani", "Tomás",
)  # fmt: skip
_LAST_NAMES = (
    "Silva", "Smith", "Johnson", "Nguyen", "Garcia", "Müller", "Schmidt", "Schneider", "Fischer",
    "Martin", "Bernard", "Dubois", "Lefèvre", "Moreau", "Brown", "Wilson", "Taylor", "Williams", "Jones",
    "Davies", "Evans", "Patel", "Singh", "Kim", "Lee", "Chen", "Wang", "Tanaka", "Sato", "O'Brien",
    "Murphy", "Kelly", "Tremblay", "Roy", "Gagnon", "Côté", "Anderson", "Thompson", "Hernández",
    "López", "Rossi", "Ferrari", "Novak", "Kowalski", "Jensen", "Hansen", "Johansson", "Okafor",
    "Mensah", "Haddad", "Cohen", "da Costa", "van der Berg", "Øberg",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
_CUSTOMER_NOTES = (
    "Prefers decaf",
    "Wholesale enquiry: follow up",
    "Gift orders only",
    "Met at the roastery open day",
)
# Phone strings a merchant really finds in customer records; no normaliser can save them.
_JUNK_PHONES = ("123", "0000", "555", "12345", "n/a", "+1")
_USER_AGENTS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
)


@dataclass(frozen=True)
class _Region:
    province: str | None
    province_code: str | None
    cities: tuple[tuple[str, str], ...]  # (city, postcode pattern: '#' digit, '@' letter)
    area_codes: tuple[str, ...]
    taxes: tuple[tuple[str, str], ...]  # (title, rate)
    locale: str | None = None


@dataclass(frozen=True)
class _Country:
    code: str
    name: str
    currency: str
    weight: int
    locale: str
    streets: tuple[str, ...]
    number_after_street: bool
    # Templates over numbers reserved for fiction where the country has them (555-01xx, 020 7946 0xxx...).
    e164: str
    national: str
    digits: int
    regions: tuple[_Region, ...]
    shipping: tuple[str, str, Decimal]  # (title, code, price) when not domestic
    tracking_company: str


_COUNTRIES: tuple[_Country, ...] = (
    _Country(
        "US", "United States", "USD", 55, "en",
        ("Market Street", "Oak Avenue", "Maple Drive", "Pine Street", "Sunset Boulevard", "Lakeview Road"),
        False, "+1{area}55501{n}", "({area}) 555-01{n}", 2,
        (
            _Region("California", "CA",
                    (("San Francisco", "941##"), ("Los Angeles", "900##"), ("San Diego", "921##")),
                    ("415", "213", "619"), (("CA State Tax", "0.0725"),)),
            _Region("New York", "NY", (("New York", "100##"), ("Brooklyn", "112##"), ("Buffalo", "142##")),
                    ("212", "718", "716"), (("NY State Tax", "0.04"),)),
            _Region("Texas", "TX", (("Austin", "787##"), ("Houston", "770##"), ("Dallas", "752##")),
                    ("512", "713", "214"), (("TX State Tax", "0.0625"),)),
            _Region("Illinois", "IL", (("Chicago", "606##"),), ("312",), (("IL State Tax", "0.0625"),)),
            _Region("Washington", "WA", (("Seattle", "981##"),), ("206",), (("WA State Tax", "0.065"),)),
            _Region("Oregon", "OR", (("Portland", "972##"),), ("503",), ()),
            _Region("Massachusetts", "MA", (("Boston", "021##"),), ("617",), (("MA State Tax", "0.0625"),)),
            _Region("Florida", "FL", (("Miami", "331##"),), ("305",), (("FL State Tax", "0.06"),)),
        ),
        ("Standard International", "INTL", Decimal("19.99")), "USPS",
    ),
    _Country(
        "CA", "Canada", "CAD", 12, "en-CA",
        ("King Street West", "Rue Sainte-Catherine", "Granville Street", "Jasper Avenue", "Bank Street"),
        False, "+1{area}55501{n}", "({area}) 555-01{n}", 2,
        (
            _Region("Ontario", "ON", (("Toronto", "M5V #@#"), ("Ottawa", "K1P #@#")), ("416", "613"),
                    (("HST", "0.13"),)),
            _Region("Quebec", "QC", (("Montréal", "H2X #@#"), ("Québec", "G1R #@#")), ("514", "418"),
                    (("GST", "0.05"), ("QST", "0.09975")), "fr-CA"),
            _Region("British Columbia", "BC", (("Vancouver", "V6B #@#"),), ("604",),
                    (("GST", "0.05"), ("PST", "0.07"))),
            _Region("Alberta", "AB", (("Calgary", "T2P #@#"),), ("403",), (("GST", "0.05"),)),
        ),
        ("Standard to Canada", "CA-STD", Decimal("12.99")), "Canada Post",
    ),
    _Country(
        "GB", "United Kingdom", "GBP", 11, "en-GB",
        ("High Street", "Station Road", "Church Lane", "Baker Street", "Victoria Road"),
        False, "+442079460{n}", "020 7946 0{n}", 3,
        (_Region(None, None, (("London", "SW1A #@@"), ("Manchester", "M1 #@@"), ("Edinburgh", "EH1 #@@"),
                              ("Bristol", "BS1 #@@")), ("",), (("GB VAT", "0.20"),)),),
        ("International Shipping", "INTL", Decimal("19.99")), "Royal Mail",
    ),
    _Country(
        "FR", "France", "EUR", 8, "fr",
        ("Rue de Rivoli", "Avenue Jean Jaurès", "Rue de la République", "Boulevard Voltaire",
         "Rue Victor Hugo"),
        False, "+3319900{n}", "019900{n}", 4,
        (_Region(None, None, (("Paris", "7500#"), ("Lyon", "6900#"), ("Marseille", "1300#"),
                              ("Bordeaux", "3300#")), ("",), (("FR TVA", "0.20"),)),),
        ("International Shipping", "INTL", Decimal("19.99")), "DHL Express",
    ),
    _Country(
        "DE", "Germany", "EUR", 8, "de",
        ("Hauptstraße", "Bahnhofstraße", "Schillerstraße", "Gartenstraße", "Lindenallee"),
        True, "+493023125{n}", "030 23125{n}", 3,
        (_Region(None, None, (("Berlin", "101##"), ("München", "803##"), ("Hamburg", "200##"),
                              ("Köln", "506##")), ("",), (("DE MwSt", "0.19"),)),),
        ("International Shipping", "INTL", Decimal("19.99")), "DHL Express",
    ),
    _Country(
        "AU", "Australia", "AUD", 6, "en-AU",
        ("George Street", "Collins Street", "Queen Street", "Hay Street"),
        False, "+61491570{n}", "0491 570 {n}", 3,
        (
            _Region("New South Wales", "NSW", (("Sydney", "20##"),), ("",), (("AU GST", "0.10"),)),
            _Region("Victoria", "VIC", (("Melbourne", "30##"),), ("",), (("AU GST", "0.10"),)),
            _Region("Queensland", "QLD", (("Brisbane", "40##"),), ("",), (("AU GST", "0.10"),)),
            _Region("Western Australia", "WA", (("Perth", "60##"),), ("",), (("AU GST", "0.10"),)),
        ),
        ("International Shipping", "INTL", Decimal("24.99")), "Australia Post",
    ),
)  # fmt: skip
_COUNTRY_WEIGHTS = tuple(country.weight for country in _COUNTRIES)
_FOREIGN_CURRENCIES = ("CAD", "EUR", "GBP", "AUD")


def _fill(pattern: str, rng: random.Random) -> str:
    out = []
    for char in pattern:
        if char == "#":
            out.append(str(rng.randrange(10)))
        elif char == "@":
            out.append(chr(ord("A") + rng.randrange(26)))
        else:
            out.append(char)
    return "".join(out)


def _ascii_slug(text: str, keep: str = "") -> str:
    text = text.replace("ß", "ss").replace("Ø", "O").replace("ø", "o")
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return "".join(char for char in plain if char.isalnum() or char in keep)


@dataclass
class _Buyer:
    """Someone who shops: a registered customer (with `customer`) or a guest. Mutable: profiles get edited."""

    first_name: str
    last_name: str
    email: str | None
    phone: str | None  # as typed
    country: _Country
    region: _Region
    city: str
    zip: str
    address1: str
    address2: str | None
    company: str | None
    locale: str
    user_agent: str
    browser_ip: str
    accepts_marketing: bool = False
    sms_state: str | None = None
    orders_placed: int = 0
    customer: JSON | None = None  # current customers/* payload; None for guests

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


def _phone_number(rng: random.Random, country: _Country, region: _Region) -> tuple[str, str]:
    """(E.164, national) forms of one fictional number."""
    area = rng.choice(region.area_codes)
    digits = f"{rng.randrange(10**country.digits):0{country.digits}d}"
    return country.e164.format(area=area, n=digits), country.national.format(area=area, n=digits)


def _draw_number(
    rng: random.Random, country: _Country, region: _Region, taken: set[str] | None
) -> tuple[str, str]:
    """A number no one else in the store has: Shopify refuses a customer phone that is already taken."""
    for _ in range(50):
        e164, national = _phone_number(rng, country, region)
        if taken is None or e164 not in taken:
            break
    if taken is not None:
        taken.add(e164)
    return e164, national


def _typed_phone(rng: random.Random, country: _Country, region: _Region, taken: set[str] | None) -> str:
    """How buyers type phones: mostly E.164, some national without country code, a few junk."""
    roll = rng.random()
    if roll >= 0.90:
        return rng.choice(_JUNK_PHONES)
    e164, national = _draw_number(rng, country, region, taken)
    return e164 if roll < 0.75 else national


def _email_for(rng: random.Random, first: str, last: str, number: int) -> str:
    first_part, last_part = _ascii_slug(first), _ascii_slug(last)
    domain = rng.choice(_EMAIL_DOMAINS)
    style = rng.random()
    if style < 0.7:
        local = f"{first_part}.{last_part}.{number}"
    elif style < 0.9:
        local = f"{first_part}{last_part}{number}"
    else:
        local = f"{first_part}_{last_part}{number}"
    return f"{local}@{domain}"


def _make_buyer(
    rng: random.Random,
    *,
    taken_emails: set[str] | None,
    taken_phones: set[str] | None = None,
    email_number: int | None = None,
    phone_share: float = 0.6,
    with_email: bool = True,
) -> _Buyer:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    country = rng.choices(_COUNTRIES, weights=_COUNTRY_WEIGHTS)[0]
    region = rng.choice(country.regions)
    city, postcode = rng.choice(region.cities)
    street, number = rng.choice(country.streets), rng.randint(1, 240)
    address1 = f"{street} {number}" if country.number_after_street else f"{number} {street}"
    email: str | None = None
    if with_email:
        while True:
            candidate = _email_for(
                rng, first, last, email_number if email_number is not None else rng.randint(1, 999)
            )
            if taken_emails is None or candidate not in taken_emails:
                break
        if taken_emails is not None:
            taken_emails.add(candidate)
        email = candidate
    phone = _typed_phone(rng, country, region, taken_phones) if rng.random() < phone_share else None
    return _Buyer(
        first_name=first,
        last_name=last,
        email=email,
        phone=phone,
        country=country,
        region=region,
        city=city,
        zip=_fill(postcode, rng),
        address1=address1,
        address2=f"Apt {rng.randint(1, 40)}" if rng.random() < 0.2 else None,
        company=rng.choice(("Ridgeway Design", "Larkspur Studio", "Northgate Legal"))
        if rng.random() < 0.08
        else None,
        locale=region.locale or country.locale,
        user_agent=rng.choice(_USER_AGENTS),
        # TEST-NET ranges (RFC 5737): look like client IPs, belong to nobody.
        browser_ip=f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randint(1, 254)}",
    )


def _order_address(buyer: _Buyer) -> JSON:
    return {
        "first_name": buyer.first_name,
        "address1": buyer.address1,
        "phone": buyer.phone,
        "city": buyer.city,
        "zip": buyer.zip,
        "province": buyer.region.province,
        "country": buyer.country.name,
        "last_name": buyer.last_name,
        "address2": buyer.address2,
        "company": buyer.company,
        "latitude": None,
        "longitude": None,
        "name": buyer.name,
        "country_code": buyer.country.code,
        "province_code": buyer.region.province_code,
    }


def _customer_address(buyer: _Buyer, address_id: int, customer_id: int) -> JSON:
    return {
        "id": address_id,
        "customer_id": customer_id,
        "first_name": buyer.first_name,
        "last_name": buyer.last_name,
        "company": buyer.company,
        "address1": buyer.address1,
        "address2": buyer.address2,
        "city": buyer.city,
        "province": buyer.region.province,
        "country": buyer.country.name,
        "zip": buyer.zip,
        "phone": buyer.phone,
        "name": buyer.name,
        "province_code": buyer.region.province_code,
        "country_code": buyer.country.code,
        "country_name": buyer.country.name,
        "default": True,
    }


def _customer_payload(
    rng: random.Random, buyer: _Buyer, *, customer_id: int, address_id: int | None, created_ms: int
) -> JSON:
    """customers/create body for API 2026-01: no tags, consent, orders_count or total_spent any more."""
    addresses = [_customer_address(buyer, address_id, customer_id)] if address_id is not None else []
    payload: JSON = {
        "id": customer_id,
        "email": buyer.email,
        "created_at": _ts(created_ms),
        "updated_at": _ts(created_ms),
        "first_name": buyer.first_name,
        "last_name": buyer.last_name,
        "state": rng.choices(("enabled", "disabled", "invited"), weights=(65, 30, 5))[0],
        "note": rng.choice(_CUSTOMER_NOTES) if rng.random() < 0.1 else None,
        "verified_email": rng.random() < 0.9,
        "multipass_identifier": None,
        "tax_exempt": False,
        "currency": SHOP_CURRENCY,
        "phone": buyer.phone,
        "addresses": addresses,
        "tax_exemptions": [],
        "admin_graphql_api_id": _gid("Customer", customer_id),
    }
    if addresses:
        payload["default_address"] = addresses[0]
    return payload


def _customer_embed(customer: JSON) -> JSON:
    """The customer object inside orders and checkouts: the customer payload without its address list."""
    # Copied one level deep (default_address, tax_exemptions hold only scalars), so later edits
    # of the customer do not reach payloads already recorded.
    return {key: copy.copy(value) for key, value in customer.items() if key != "addresses"}


# ---------------------------------------------------------------------------------------------
# Catalogue
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProductKind:
    product_type: str
    vendor: str
    sku_prefix: str
    titles: tuple[str, ...]
    price_range: tuple[int, int]
    options: tuple[tuple[str, tuple[tuple[str, str, int], ...]], ...]  # name, ((value, price factor, grams))
    tags: tuple[str, ...]


_KINDS: tuple[_ProductKind, ...] = (
    _ProductKind(
        "Coffee", "Northbeam Roasters", "COF",
        ("Ethiopia Yirgacheffe", "Colombia Huila", "Guatemala Antigua", "Kenya Nyeri", "Sumatra Mandheling",
         "Brazil Cerrado", "Costa Rica Tarrazú", "Rwanda Nyamasheke", "House Espresso Blend",
         "Decaf Swiss Water"),
        (14, 22),
        (("Size", (("250g", "1", 250), ("1kg", "3.4", 1000))),
         ("Grind", (("Whole Bean", "1", 0), ("Ground", "1", 0)))),
        ("coffee", "single-origin", "light-roast", "medium-roast", "dark-roast", "subscription-eligible"),
    ),
    _ProductKind(
        "Tea", "Kettle & Leaf", "TEA",
        ("Sencha Kabuse", "Earl Grey Cream", "Darjeeling First Flush", "Chamomile Blossom", "Jasmine Pearls",
         "Rooibos Vanilla", "Ceremonial Matcha", "English Breakfast", "Milk Oolong"),
        (8, 16),
        (("Size", (("50g", "1", 50), ("100g", "1.8", 100))),),
        ("tea", "loose-leaf", "green-tea", "black-tea", "herbal", "caffeine-free"),
    ),
    _ProductKind(
        "Mugs", "Clayworks Studio", "MUG",
        ("Speckled Stoneware Mug", "Enamel Camp Mug", "Double-Wall Glass Cup", "Insulated Travel Tumbler",
         "Espresso Cup Set"),
        (16, 32),
        (("Color", (("Sand", "1", 380), ("Charcoal", "1", 380), ("Sage", "1", 380))),),
        ("mugs", "ceramic", "handmade", "gift"),
    ),
    _ProductKind(
        "Apparel", "Demo Store Goods", "APP",
        ("Logo Tee", "Barista Apron", "Roastery Hoodie", "Crew Sweatshirt"),
        (24, 60),
        (("Size", (("S", "1", 200), ("M", "1", 220), ("L", "1", 240), ("XL", "1", 260))),),
        ("apparel", "merch", "organic-cotton"),
    ),
    _ProductKind(
        "Accessories", "Brewline", "ACC",
        ("Pour-Over Dripper", "Gooseneck Kettle", "Burr Grinder", "Paper Filters (100)", "Cold Brew Bottle",
         "Digital Brew Scale", "Canvas Tote"),
        (12, 140),
        (),
        ("brewing", "gear", "gift"),
    ),
)  # fmt: skip


def _nice_price(amount: Decimal) -> Decimal:
    return max(Decimal("1.95"), amount.quantize(Decimal(1), rounding=ROUND_HALF_UP) - Decimal("0.05"))


@dataclass
class _Product:
    payload: JSON
    weight: float  # popularity: a few best-sellers, a long tail


def _make_products(
    rng: random.Random, ids: _Ids, *, count: int, first_ms: int, shop_id: int
) -> list[_Product]:
    products: list[_Product] = []
    used_titles: set[str] = set()
    created_ms = first_ms
    for index in range(count):
        kind = _KINDS[index % len(_KINDS)] if index < len(_KINDS) else rng.choice(_KINDS)
        free = [title for title in kind.titles if title not in used_titles]
        title = rng.choice(free) if free else f"{rng.choice(kind.titles)} No. {index}"
        used_titles.add(title)
        products.append(_make_product(rng, ids, kind, title, index, created_ms, shop_id))
        created_ms += rng.randint(60, 300) * _SECOND
    return products


def _make_product(
    rng: random.Random, ids: _Ids, kind: _ProductKind, title: str, index: int, created_ms: int, shop_id: int
) -> _Product:
    product_id = ids.product()
    handle = "-".join(part for part in _ascii_slug(title, keep=" -").replace("-", " ").split())
    base = Decimal(rng.randint(*kind.price_range))
    created = _ts(created_ms)
    combos: list[tuple[list[str], Decimal, int]] = [([], Decimal(1), 0)]
    for _name, values in kind.options:
        combos = [
            (names + [value], factor * Decimal(value_factor), grams + value_grams)
            for names, factor, grams in combos
            for value, value_factor, value_grams in values
        ]
    variants: list[JSON] = []
    for position, (names, factor, grams) in enumerate(combos, start=1):
        variant_id = ids.variant()
        variant_title = " / ".join(names) if names else "Default Title"
        sku_tail = "-".join(_ascii_slug(name).upper() for name in names) or "STD"
        variants.append(
            {
                "admin_graphql_api_id": _gid("ProductVariant", variant_id),
                "barcode": None,
                "compare_at_price": None,
                "created_at": created,
                "fulfillment_service": "manual",
                "id": variant_id,
                "inventory_management": "shopify",
                "inventory_policy": "deny",
                "position": position,
                "price": _s(_nice_price(base * factor)),
                "product_id": product_id,
                "sku": f"{kind.sku_prefix}-{index + 1:03d}-{sku_tail}",
                "taxable": True,
                "title": variant_title,
                "updated_at": created,
                "option1": names[0] if names else "Default Title",
                "option2": names[1] if len(names) > 1 else None,
                "option3": None,
                "grams": grams or rng.choice((150, 450, 900)),
                "image_id": None,
                "weight": grams or 450,
                "weight_unit": "g",
                "inventory_item_id": ids.inventory_item(),
                "inventory_quantity": rng.randint(5, 400),
                "old_inventory_quantity": 0,
                "requires_shipping": True,
            }
        )
    for variant in variants:
        variant["old_inventory_quantity"] = variant["inventory_quantity"]
    options = [
        {
            "id": ids.option(),
            "product_id": product_id,
            "name": name,
            "position": position,
            "values": [value for value, _factor, _grams in values],
        }
        for position, (name, values) in enumerate(kind.options, start=1)
    ] or [
        {
            "id": ids.option(),
            "product_id": product_id,
            "name": "Title",
            "position": 1,
            "values": ["Default Title"],
        }
    ]
    images = []
    for position in range(1, rng.randint(1, 3) + 1):
        image_id = ids.image()
        images.append(
            {
                "id": image_id,
                "admin_graphql_api_id": _gid("ProductImage", image_id),
                "product_id": product_id,
                "position": position,
                "created_at": created,
                "updated_at": created,
                "alt": title if position == 1 else None,
                "width": 2048,
                "height": 2048,
                "src": f"https://cdn.example.com/s/files/1/{shop_id}/files/{handle}-{position}.jpg"
                f"?v={created_ms // 1000}",
                "variant_ids": [],
            }
        )
    tags = sorted({kind.tags[0], *rng.sample(kind.tags[1:], k=min(2, len(kind.tags) - 1))})
    payload: JSON = {
        "admin_graphql_api_id": _gid("Product", product_id),
        "body_html": f"<p>{title} by {kind.vendor}.</p>",
        "created_at": created,
        "handle": handle,
        "id": product_id,
        "product_type": kind.product_type,
        "published_at": created,
        "template_suffix": None,
        "title": title,
        "updated_at": created,
        "vendor": kind.vendor,
        "status": "active",
        "published_scope": "global",
        "tags": ", ".join(tags),
        "variants": variants,
        "options": options,
        "images": images,
        "image": images[0],
        "variant_gids": [
            {"admin_graphql_api_id": v["admin_graphql_api_id"], "updated_at": created} for v in variants
        ],
    }
    return _Product(payload=payload, weight=rng.paretovariate(1.3))


def _touch_product(rng: random.Random, product: JSON, now_ms: int) -> None:
    """A merchant edit: a price change (sometimes a sale with compare-at price) or new tags."""
    stamp = _ts(now_ms)
    product["updated_at"] = stamp
    if rng.random() < 0.6:
        factor = Decimal(rng.choice(("0.85", "0.9", "1.05", "1.1")))
        for variant in product["variants"]:
            old = Decimal(variant["price"])
            variant["price"] = _s(_nice_price(old * factor))
            variant["compare_at_price"] = _s(old) if factor < 1 else None
            variant["updated_at"] = stamp
    else:
        tags = set(product["tags"].split(", "))
        tags.add(rng.choice(("bestseller", "staff-pick", "new-arrival", "limited")))
        product["tags"] = ", ".join(sorted(tags))
    product["variant_gids"] = [
        {"admin_graphql_api_id": v["admin_graphql_api_id"], "updated_at": v["updated_at"]}
        for v in product["variants"]
    ]


# ---------------------------------------------------------------------------------------------
# Pricing: every amount is built from Decimal parts, in shop and presentment currency side by side
# ---------------------------------------------------------------------------------------------


@dataclass
class _Discount:
    code: str
    kind: str  # "percentage" | "fixed_amount"
    value: Decimal  # percent, or amount in shop currency


@dataclass
class _Shipping:
    title: str
    code: str
    price: Decimal
    price_p: Decimal


@dataclass
class _Tax:
    title: str
    rate: Decimal
    amount: Decimal
    amount_p: Decimal


@dataclass
class _Line:
    product: JSON
    variant: JSON
    qty: int
    unit: Decimal  # shop currency
    unit_p: Decimal  # presentment currency
    disc: Decimal = ZERO
    disc_p: Decimal = ZERO
    taxes: list[_Tax] = field(default_factory=list)

    @property
    def gross(self) -> Decimal:
        return self.unit * self.qty

    @property
    def gross_p(self) -> Decimal:
        return self.unit_p * self.qty

    @property
    def title(self) -> str:
        return str(self.product["title"])

    @property
    def variant_title(self) -> str | None:
        title = str(self.variant["title"])
        return None if title == "Default Title" else title

    @property
    def name(self) -> str:
        return f"{self.title} - {self.variant_title}" if self.variant_title else self.title


@dataclass
class _Pricing:
    currency: str
    lines: list[_Line]
    discount: _Discount | None = None
    shipping: _Shipping | None = None

    def line_items(self) -> tuple[Decimal, Decimal]:
        return sum((li.gross for li in self.lines), ZERO), sum((li.gross_p for li in self.lines), ZERO)

    def discounts(self) -> tuple[Decimal, Decimal]:
        return sum((li.disc for li in self.lines), ZERO), sum((li.disc_p for li in self.lines), ZERO)

    def subtotal(self) -> tuple[Decimal, Decimal]:
        (items, items_p), (disc, disc_p) = self.line_items(), self.discounts()
        return items - disc, items_p - disc_p

    def tax(self) -> tuple[Decimal, Decimal]:
        taxes = [tax for li in self.lines for tax in li.taxes]
        return sum((t.amount for t in taxes), ZERO), sum((t.amount_p for t in taxes), ZERO)

    def shipping_price(self) -> tuple[Decimal, Decimal]:
        return (self.shipping.price, self.shipping.price_p) if self.shipping else (ZERO, ZERO)

    def total(self) -> tuple[Decimal, Decimal]:
        (sub, sub_p), (tax, tax_p), (ship, ship_p) = self.subtotal(), self.tax(), self.shipping_price()
        return sub + tax + ship, sub_p + tax_p + ship_p

    def tax_lines(self) -> list[_Tax]:
        """Order-level tax lines: the line taxes summed per title."""
        grouped: dict[str, _Tax] = {}
        for tax in (t for li in self.lines for t in li.taxes):
            seen = grouped.setdefault(tax.title, _Tax(tax.title, tax.rate, ZERO, ZERO))
            seen.amount += tax.amount
            seen.amount_p += tax.amount_p
        return list(grouped.values())


def _new_lines(items: list[tuple[JSON, JSON, int]], currency: str) -> list[_Line]:
    return [
        _Line(
            product=product,
            variant=variant,
            qty=qty,
            unit=Decimal(variant["price"]),
            unit_p=_conv(Decimal(variant["price"]), currency),
        )
        for product, variant, qty in items
    ]


def _price(pricing: _Pricing, *, taxes: tuple[tuple[str, str], ...]) -> None:
    """Allocate the discount over the lines and compute line taxes, separately in each currency."""
    for line in pricing.lines:
        line.disc, line.disc_p, line.taxes = ZERO, ZERO, []
    discount = pricing.discount
    if discount is not None and discount.kind == "percentage":
        for line in pricing.lines:
            line.disc = _q(line.gross * discount.value / 100)
            line.disc_p = _q(line.gross_p * discount.value / 100)
    elif discount is not None:
        # A fixed amount is spread in proportion to line value; the last line takes the rounding rest.
        amount, amount_p = discount.value, _conv(discount.value, pricing.currency)
        (items, items_p) = pricing.line_items()
        for line in pricing.lines[:-1]:
            line.disc = _q(amount * line.gross / items)
            line.disc_p = _q(amount_p * line.gross_p / items_p)
        last = pricing.lines[-1]
        last.disc = amount - sum((li.disc for li in pricing.lines[:-1]), ZERO)
        last.disc_p = amount_p - sum((li.disc_p for li in pricing.lines[:-1]), ZERO)
    for line in pricing.lines:
        for title, rate in taxes:
            rate_d = Decimal(rate)
            line.taxes.append(
                _Tax(
                    title,
                    rate_d,
                    _q((line.gross - line.disc) * rate_d),
                    _q((line.gross_p - line.disc_p) * rate_d),
                )
            )


def _choose_shipping(rng: random.Random, buyer: _Buyer, currency: str, items_usd: Decimal) -> _Shipping:
    if buyer.country.code == "US":
        if rng.random() < 0.15:
            title, code, price = "Express", "EXPRESS", Decimal("14.99")
        elif items_usd >= 75:
            title, code, price = "Free Shipping", "FREE", ZERO
        else:
            title, code, price = "Standard", "STANDARD", Decimal("5.99")
    else:
        title, code, price = buyer.country.shipping
    return _Shipping(title, code, price, _conv(price, currency))


def _choose_discount(rng: random.Random, items_usd: Decimal, previous_orders: int) -> _Discount | None:
    if rng.random() >= 0.2:
        return None
    if previous_orders == 0 and rng.random() < 0.6:
        return _Discount("WELCOME10", "percentage", Decimal(10))
    if previous_orders >= 3 and rng.random() < 0.5:
        return _Discount("LOYAL20", "percentage", Decimal(20))
    if items_usd >= 50 and rng.random() < 0.5:
        return _Discount("SAVE10", "fixed_amount", Decimal(10))
    return _Discount("SPRING15", "percentage", Decimal(15))


def _discount_application(discount: _Discount, currency: str) -> JSON:
    value = discount.value if discount.kind == "percentage" else _conv(discount.value, currency)
    return {
        "target_type": "line_item",
        "type": "discount_code",
        "value": f"{value:.1f}" if discount.kind == "percentage" else _s(value),
        "value_type": discount.kind,
        "allocation_method": "across",
        "target_selection": "all",
        "code": discount.code,
    }


def _pick_items(
    rng: random.Random, products: list[_Product], count: int | None = None
) -> list[tuple[JSON, JSON, int]]:
    wanted = count if count is not None else rng.choices((1, 2, 3, 4), weights=(50, 30, 15, 5))[0]
    chosen: list[tuple[JSON, JSON, int]] = []
    seen: set[int] = set()
    weights = [p.weight for p in products]
    for _ in range(wanted * 4):
        if len(chosen) == wanted:
            break
        product = rng.choices(products, weights=weights)[0].payload
        variant = rng.choice(product["variants"])
        if variant["id"] in seen:
            continue
        seen.add(variant["id"])
        chosen.append((product, variant, rng.choices((1, 2, 3), weights=(75, 18, 7))[0]))
    return chosen


# ---------------------------------------------------------------------------------------------
# Orders, refunds, checkouts and carts as payloads
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shop:
    domain: str
    shop_id: int
    location_id: int


def _tax_line_payloads(taxes: list[_Tax], currency: str) -> list[JSON]:
    return [
        {
            "channel_liable": False,
            "price": _s(t.amount_p),
            "price_set": _money_set(t.amount, t.amount_p, currency),
            "rate": str(t.rate),
            "title": t.title,
        }
        for t in taxes
    ]


def _order_line_item(line: _Line, line_id: int, currency: str) -> JSON:
    return {
        "id": line_id,
        "admin_graphql_api_id": _gid("LineItem", line_id),
        "attributed_staffs": [],
        "current_quantity": line.qty,
        "fulfillable_quantity": line.qty,
        "fulfillment_service": "manual",
        "fulfillment_status": None,
        "gift_card": False,
        "grams": line.variant["grams"],
        "name": line.name,
        "price": _s(line.unit_p),
        "price_set": _money_set(line.unit, line.unit_p, currency),
        "product_exists": True,
        "product_id": line.product["id"],
        "properties": [],
        "quantity": line.qty,
        "requires_shipping": True,
        "sku": line.variant["sku"],
        "taxable": True,
        "title": line.title,
        "total_discount": _s(line.disc_p),
        "total_discount_set": _money_set(line.disc, line.disc_p, currency),
        "variant_id": line.variant["id"],
        "variant_inventory_management": "shopify",
        "variant_title": line.variant_title,
        "vendor": line.product["vendor"],
        "tax_lines": _tax_line_payloads(line.taxes, currency),
        "duties": [],
        "discount_allocations": [
            {
                "amount": _s(line.disc_p),
                "amount_set": _money_set(line.disc, line.disc_p, currency),
                "discount_application_index": 0,
            }
        ]
        if line.disc
        else [],
    }


@dataclass
class _OrderState:
    """An order being lived through: its payload plus the Decimal ledger the payload is rendered from."""

    payload: JSON
    pricing: _Pricing
    buyer: _Buyer
    sale_transaction_id: int
    gateway: str
    refunded_qty: list[int]
    refunded: list[tuple[Decimal, Decimal]] = field(default_factory=list)  # (shop, presentment) per refund
    refunded_disc: tuple[Decimal, Decimal] = (ZERO, ZERO)
    refunded_sub: tuple[Decimal, Decimal] = (ZERO, ZERO)
    refunded_tax: tuple[Decimal, Decimal] = (ZERO, ZERO)
    refunded_shipping: tuple[Decimal, Decimal] = (ZERO, ZERO)

    @property
    def currency(self) -> str:
        return self.pricing.currency

    def net_total(self) -> tuple[Decimal, Decimal]:
        (total, total_p) = self.pricing.total()
        return (
            total - sum((r[0] for r in self.refunded), ZERO),
            total_p - sum((r[1] for r in self.refunded), ZERO),
        )


def _set_money_fields(payload: JSON, name: str, shop: Decimal, pres: Decimal, currency: str) -> None:
    payload[name] = _s(pres)
    payload[f"{name}_set"] = _money_set(shop, pres, currency)


def _refresh_current_totals(order: _OrderState) -> None:
    """current_* fields: the order after refunds (Shopify's 'current' view)."""
    pricing, payload, cur = order.pricing, order.payload, order.currency
    (disc, disc_p), (sub, sub_p), (tax, tax_p) = pricing.discounts(), pricing.subtotal(), pricing.tax()
    (ship, ship_p) = pricing.shipping_price()
    c_disc = (disc - order.refunded_disc[0], disc_p - order.refunded_disc[1])
    c_sub = (sub - order.refunded_sub[0], sub_p - order.refunded_sub[1])
    c_tax = (tax - order.refunded_tax[0], tax_p - order.refunded_tax[1])
    c_ship = (ship - order.refunded_shipping[0], ship_p - order.refunded_shipping[1])
    c_total = (c_sub[0] + c_tax[0] + c_ship[0], c_sub[1] + c_tax[1] + c_ship[1])
    _set_money_fields(payload, "current_subtotal_price", *c_sub, cur)
    _set_money_fields(payload, "current_total_discounts", *c_disc, cur)
    _set_money_fields(payload, "current_total_price", *c_total, cur)
    _set_money_fields(payload, "current_total_tax", *c_tax, cur)


@dataclass(frozen=True)
class _CheckoutLink:
    cart_token: str | None
    checkout_token: str | None
    checkout_id: int | None


def _build_order(
    *,
    rng: random.Random,
    ids: _Ids,
    shop: _Shop,
    buyer: _Buyer,
    pricing: _Pricing,
    order_number: int,
    created_ms: int,
    link: _CheckoutLink,
    test: bool,
    paid: bool,
    gateway: str,
    landing_site: str | None,
) -> _OrderState:
    order_id = ids.order()
    cur = pricing.currency
    (items, items_p), (disc, disc_p) = pricing.line_items(), pricing.discounts()
    (sub, sub_p), (tax, tax_p) = pricing.subtotal(), pricing.tax()
    (ship, ship_p), (total, total_p) = pricing.shipping_price(), pricing.total()
    token = _hex(rng)
    created = _ts(created_ms)
    shipping = pricing.shipping
    shipping_lines: list[JSON] = []
    if shipping is not None:
        shipping_lines.append(
            {
                "id": ids.shipping_line(),
                "carrier_identifier": None,
                "code": shipping.code,
                "discounted_price": _s(shipping.price_p),
                "discounted_price_set": _money_set(shipping.price, shipping.price_p, cur),
                "is_removed": False,
                "phone": None,
                "price": _s(shipping.price_p),
                "price_set": _money_set(shipping.price, shipping.price_p, cur),
                "requested_fulfillment_service_id": None,
                "source": "shopify",
                "title": shipping.title,
                "tax_lines": [],
                "discount_allocations": [],
            }
        )
    payload: JSON = {
        "id": order_id,
        "admin_graphql_api_id": _gid("Order", order_id),
        "app_id": 580111,
        "browser_ip": buyer.browser_ip,
        "buyer_accepts_marketing": buyer.accepts_marketing,
        "cancel_reason": None,
        "cancelled_at": None,
        "cart_token": link.cart_token,
        "checkout_id": link.checkout_id,
        "checkout_token": link.checkout_token,
        "client_details": {
            "accept_language": f"{buyer.locale},en;q=0.9",
            "browser_height": None,
            "browser_ip": buyer.browser_ip,
            "browser_width": None,
            "session_hash": None,
            "user_agent": buyer.user_agent,
        },
        "closed_at": None,
        "confirmation_number": "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9)),
        "confirmed": True,
        "contact_email": buyer.email,
        "created_at": created,
        "currency": cur,
        "current_total_additional_fees_set": None,
        "current_total_duties_set": None,
        "customer_locale": buyer.locale,
        "device_id": None,
        "discount_codes": [
            {"code": pricing.discount.code, "amount": _s(disc_p), "type": pricing.discount.kind}
        ]
        if pricing.discount
        else [],
        "email": buyer.email,
        "estimated_taxes": False,
        "financial_status": "paid" if paid else "pending",
        "fulfillment_status": None,
        "landing_site": landing_site,
        "landing_site_ref": None,
        "location_id": None,
        "merchant_of_record_app_id": None,
        "name": f"#{order_number}",
        "note": None,
        "note_attributes": [],
        "number": order_number - 1000,
        "order_number": order_number,
        "order_status_url": f"https://{shop.domain}/{shop.shop_id}/orders/{token}/authenticate?key={_hex(rng)}",
        "original_total_additional_fees_set": None,
        "original_total_duties_set": None,
        "payment_gateway_names": [gateway],
        "phone": buyer.phone if buyer.email is None or rng.random() < 0.5 else None,
        "po_number": None,
        "presentment_currency": cur,
        "processed_at": created,
        "reference": None,
        "referring_site": rng.choice(("https://www.google.com/", "", "https://www.instagram.com/", None)),
        "source_identifier": None,
        "source_name": "web",
        "source_url": None,
        "tags": "",
        "tax_exempt": False,
        "tax_lines": _tax_line_payloads(pricing.tax_lines(), cur),
        "taxes_included": False,
        "test": test,
        "token": token,
        "total_outstanding": "0.00" if paid else _s(total_p),
        "total_shipping_price_set": _money_set(ship, ship_p, cur),
        "total_tip_received": "0.00",
        "total_weight": sum(int(li.variant["grams"]) * li.qty for li in pricing.lines),
        "updated_at": created,
        "user_id": None,
        "billing_address": _order_address(buyer),
        "customer": _customer_embed(buyer.customer) if buyer.customer is not None else None,
        "discount_applications": [_discount_application(pricing.discount, cur)] if pricing.discount else [],
        "fulfillments": [],
        "line_items": [_order_line_item(line, ids.line_item(), cur) for line in pricing.lines],
        "payment_terms": None,
        "refunds": [],
        "shipping_address": _order_address(buyer),
        "shipping_lines": shipping_lines,
    }
    _set_money_fields(payload, "subtotal_price", sub, sub_p, cur)
    _set_money_fields(payload, "total_discounts", disc, disc_p, cur)
    _set_money_fields(payload, "total_line_items_price", items, items_p, cur)
    _set_money_fields(payload, "total_price", total, total_p, cur)
    _set_money_fields(payload, "total_tax", tax, tax_p, cur)
    order = _OrderState(
        payload=payload,
        pricing=pricing,
        buyer=buyer,
        sale_transaction_id=ids.transaction(),
        gateway=gateway,
        refunded_qty=[0] * len(pricing.lines),
    )
    _refresh_current_totals(order)
    return order


def _refund(
    order: _OrderState,
    *,
    ids: _Ids,
    now_ms: int,
    quantities: list[int],
    shipping: bool,
    restock_type: str,
    note: str | None,
) -> JSON:
    """Record a refund of `quantities` per line (plus shipping) and return the refunds/create payload."""
    payload, cur = order.payload, order.currency
    refund_id = ids.refund()
    stamp = _ts(now_ms)
    lines_out: list[JSON] = []
    amount, amount_p = ZERO, ZERO
    disc_r, disc_r_p = ZERO, ZERO
    for index, (line, qty) in enumerate(zip(order.pricing.lines, quantities, strict=True)):
        if qty == 0:
            continue

        def fraction_of(value: Decimal, q: int = qty, total: int = line.qty) -> Decimal:
            # A whole line is refunded exactly; a part of it is prorated and rounded.
            return value if q == total else _q(value * q / total)

        line_disc, line_disc_p = fraction_of(line.disc), fraction_of(line.disc_p)
        subtotal, subtotal_p = line.unit * qty - line_disc, line.unit_p * qty - line_disc_p
        tax = sum((fraction_of(t.amount) for t in line.taxes), ZERO)
        tax_p = sum((fraction_of(t.amount_p) for t in line.taxes), ZERO)
        order.refunded_qty[index] += qty
        disc_r, disc_r_p = disc_r + line_disc, disc_r_p + line_disc_p
        order.refunded_sub = (order.refunded_sub[0] + subtotal, order.refunded_sub[1] + subtotal_p)
        order.refunded_tax = (order.refunded_tax[0] + tax, order.refunded_tax[1] + tax_p)
        amount, amount_p = amount + subtotal + tax, amount_p + subtotal_p + tax_p
        item = payload["line_items"][index]
        item["current_quantity"] = line.qty - order.refunded_qty[index]
        if item["fulfillment_status"] is None:
            item["fulfillable_quantity"] = item["current_quantity"]
        lines_out.append(
            {
                "id": ids.refund_line(),
                "quantity": qty,
                "line_item_id": item["id"],
                "location_id": None,
                "restock_type": restock_type,
                "subtotal": _s(subtotal_p),
                "total_tax": _s(tax_p),
                "subtotal_set": _money_set(subtotal, subtotal_p, cur),
                "total_tax_set": _money_set(tax, tax_p, cur),
                "line_item": {
                    key: value
                    for key, value in item.items()
                    if key not in ("attributed_staffs", "current_quantity")
                },
            }
        )
    order.refunded_disc = (order.refunded_disc[0] + disc_r, order.refunded_disc[1] + disc_r_p)
    adjustments: list[JSON] = []
    (ship, ship_p) = order.pricing.shipping_price()
    if shipping and ship and not order.refunded_shipping[0]:
        order.refunded_shipping = (ship, ship_p)
        amount, amount_p = amount + ship, amount_p + ship_p
        adjustments.append(
            {
                "id": ids.adjustment(),
                "order_id": payload["id"],
                "refund_id": refund_id,
                "amount": _s(-ship_p),
                "tax_amount": "0.00",
                "kind": "shipping_refund",
                "reason": "Shipping refund",
                "amount_set": _money_set(-ship, -ship_p, cur),
                "tax_amount_set": _money_set(ZERO, ZERO, cur),
            }
        )
    order.refunded.append((amount, amount_p))
    transaction_id = ids.transaction()
    refund: JSON = {
        "id": refund_id,
        "order_id": payload["id"],
        "created_at": stamp,
        "note": note,
        "user_id": None,
        "processed_at": stamp,
        "restock": restock_type != "no_restock",
        "duties": [],
        "total_duties_set": _money_set(ZERO, ZERO, cur),
        "return": None,
        "admin_graphql_api_id": _gid("Refund", refund_id),
        "refund_line_items": lines_out,
        "transactions": [
            {
                "id": transaction_id,
                "admin_graphql_api_id": _gid("OrderTransaction", transaction_id),
                "amount": _s(amount_p),
                "authorization": None,
                "created_at": stamp,
                "currency": cur,
                "device_id": None,
                "error_code": None,
                "gateway": order.gateway,
                "kind": "refund",
                "location_id": None,
                "message": "Refund processed",
                "order_id": payload["id"],
                "parent_id": order.sale_transaction_id,
                "payment_id": f"c{payload['id']}.{len(order.refunded) + 1}",
                "processed_at": stamp,
                "receipt": {},
                "source_name": "web",
                "status": "success",
                "test": payload["test"],
                "user_id": None,
            }
        ],
        "order_adjustments": adjustments,
    }
    payload["refunds"].append(refund)
    fully = all(done == line.qty for done, line in zip(order.refunded_qty, order.pricing.lines, strict=True))
    payload["financial_status"] = (
        "refunded" if fully and (order.refunded_shipping[0] or not ship) else "partially_refunded"
    )
    payload["updated_at"] = stamp
    _refresh_current_totals(order)
    return refund


def _fulfill(order: _OrderState, *, ids: _Ids, shop: _Shop, rng: random.Random, now_ms: int) -> None:
    payload = order.payload
    fulfillment_id = ids.fulfillment()
    stamp = _ts(now_ms)
    tracking = f"{rng.choice(('1Z', '92', 'LX', 'RR'))}{rng.randrange(10**14):014d}"
    payload["fulfillments"].append(
        {
            "id": fulfillment_id,
            "admin_graphql_api_id": _gid("Fulfillment", fulfillment_id),
            "created_at": stamp,
            "location_id": shop.location_id,
            "name": f"{payload['name']}.{len(payload['fulfillments']) + 1}",
            "order_id": payload["id"],
            "origin_address": {},
            "receipt": {},
            "service": "manual",
            "shipment_status": None,
            "status": "success",
            "tracking_company": order.buyer.country.tracking_company,
            "tracking_number": tracking,
            "tracking_numbers": [tracking],
            "tracking_url": f"https://track.example.net/{tracking}",
            "tracking_urls": [f"https://track.example.net/{tracking}"],
            "updated_at": stamp,
            "line_items": [
                {
                    "id": item["id"],
                    "product_id": item["product_id"],
                    "variant_id": item["variant_id"],
                    "title": item["title"],
                    "name": item["name"],
                    "sku": item["sku"],
                    "quantity": item["quantity"],
                    "fulfillment_status": "fulfilled",
                }
                for item in payload["line_items"]
            ],
        }
    )
    for item in payload["line_items"]:
        item["fulfillment_status"] = "fulfilled"
        item["fulfillable_quantity"] = 0
    payload["fulfillment_status"] = "fulfilled"
    # Shopify archives an order once it is paid and fulfilled (the default store setting).
    payload["closed_at"] = stamp
    payload["updated_at"] = stamp


def _cart_line(line: _Line, cart_token: str, currency: str) -> JSON:
    key_hash = hashlib.sha256(f"{cart_token}:{line.variant['id']}".encode()).hexdigest()[:32]
    return {
        "id": line.variant["id"],
        "properties": None,
        "quantity": line.qty,
        "variant_id": line.variant["id"],
        "key": f"{line.variant['id']}:{key_hash}",
        "discounted_price": _s(line.unit_p),
        "discounts": [],
        "gift_card": False,
        "grams": line.variant["grams"],
        "line_price": _s(line.gross_p),
        "original_line_price": _s(line.gross_p),
        "original_price": _s(line.unit_p),
        "price": _s(line.unit_p),
        "product_id": line.product["id"],
        "sku": line.variant["sku"],
        "taxable": True,
        "title": line.name,
        "total_discount": "0.00",
        "vendor": line.product["vendor"],
        "discounted_price_set": _money_set(line.unit, line.unit_p, currency),
        "line_price_set": _money_set(line.gross, line.gross_p, currency),
        "original_line_price_set": _money_set(line.gross, line.gross_p, currency),
        "price_set": _money_set(line.unit, line.unit_p, currency),
        "total_discount_set": _money_set(ZERO, ZERO, currency),
    }


def _checkout_line(line: _Line, key: str, location_id: int, discount: _Discount | None) -> JSON:
    return {
        "applied_discounts": [],
        "discount_allocations": [
            {"amount": _s(line.disc_p), "description": discount.code, "application_type": "discount_code"}
        ]
        if discount is not None and line.disc_p
        else [],
        "key": key,
        "destination_location_id": None,
        "fulfillment_service": "manual",
        "gift_card": False,
        "grams": line.variant["grams"],
        "origin_location_id": location_id,
        "presentment_title": line.title,
        "presentment_variant_title": line.variant_title or "",
        "product_id": line.product["id"],
        "properties": None,
        "quantity": line.qty,
        "requires_shipping": True,
        "sku": line.variant["sku"],
        "tax_lines": [
            {"price": _s(t.amount_p), "rate": str(t.rate), "title": t.title, "channel_liable": False}
            for t in line.taxes
        ],
        "taxable": True,
        "title": line.title,
        "variant_id": line.variant["id"],
        "variant_title": line.variant_title or "",
        "variant_price": _s(line.unit_p),
        "vendor": line.product["vendor"],
        "user_id": None,
        "unit_price_measurement": None,
        "rank": None,
        "compare_at_price": line.variant["compare_at_price"],
        "line_price": _s(line.gross_p),
        "price": _s(line.unit_p),
    }


def _new_cart_token(rng: random.Random) -> str:
    """Cart tokens in two real shapes: base64 of 'gcp-<region>:<ULID>' (2024+) and 'c1-<hex>' (2023)."""
    if rng.random() < 0.8:
        ulid = "01J" + "".join(rng.choice("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for _ in range(23))
        return base64.urlsafe_b64encode(f"gcp-us-east1:{ulid}".encode()).decode("ascii")
    return f"c1-{_hex(rng)}"


def _later(rng: random.Random, now_ms: int, low_s: int, high_s: int) -> int:
    """A moment low..high seconds later, never in the same second, so updated_at always moves on."""
    return now_ms + rng.randint(max(low_s, 1) * _SECOND + 1, high_s * _SECOND)


def _new_checkout(
    rng: random.Random,
    shop: _Shop,
    *,
    checkout_id: int,
    token: str,
    cart_token: str,
    currency: str,
    lines: list[_Line],
    locale: str,
    now_ms: int,
) -> JSON:
    """checkouts/create body: the cart at checkout, before the buyer gives contact details (money not yet set)."""
    return {
        "id": checkout_id,
        "token": token,
        "cart_token": cart_token,
        "email": None,
        "gateway": None,
        "buyer_accepts_marketing": False,
        "buyer_accepts_sms_marketing": False,
        "created_at": _ts(now_ms),
        "updated_at": _ts(now_ms),
        "landing_site": f"/products/{lines[0].product['handle']}",
        "note": None,
        "note_attributes": [],
        "referring_site": rng.choice(("https://www.google.com/", "", None)),
        "shipping_lines": [],
        "taxes_included": False,
        "total_weight": 0,
        "currency": currency,
        "completed_at": None,
        "closed_at": None,
        "user_id": None,
        "location_id": None,
        "source_identifier": None,
        "source_url": None,
        "device_id": None,
        "phone": None,
        "customer_locale": locale,
        "line_items": [],
        "name": f"#{checkout_id}",
        "source": None,
        "abandoned_checkout_url": f"https://{shop.domain}/checkouts/ac/{cart_token}/recover?key={_hex(rng)}",
        "discount_codes": [],
        "tax_lines": [],
        "source_name": "web",
        "presentment_currency": currency,
        "sms_marketing_phone": None,
        "total_discounts": "0.00",
        "total_line_items_price": "0.00",
        "total_price": "0.00",
        "total_tax": "0.00",
        "subtotal_price": "0.00",
        "total_duties": None,
    }


def _render_checkout_money(checkout: JSON, pricing: _Pricing, location_id: int) -> None:
    """A checkout's lines, discount, shipping, tax and totals, from its pricing."""
    line_keys = [
        hashlib.sha256(f"{checkout['token']}:{i}".encode()).hexdigest()[:32] for i in range(len(pricing.lines))
    ]
    checkout["line_items"] = [
        _checkout_line(line, key, location_id, pricing.discount)
        for line, key in zip(pricing.lines, line_keys, strict=True)
    ]
    checkout["total_weight"] = sum(int(line.variant["grams"]) * line.qty for line in pricing.lines)
    checkout["total_line_items_price"] = _s(pricing.line_items()[1])
    checkout["total_discounts"] = _s(pricing.discounts()[1])
    checkout["subtotal_price"] = _s(pricing.subtotal()[1])
    checkout["total_tax"] = _s(pricing.tax()[1])
    checkout["total_price"] = _s(pricing.total()[1])
    checkout["tax_lines"] = [
        {"price": _s(t.amount_p), "rate": str(t.rate), "title": t.title, "channel_liable": False}
        for t in pricing.tax_lines()
    ]
    checkout["discount_codes"] = (
        [
            {
                "code": pricing.discount.code,
                "amount": _s(pricing.discounts()[1]),
                "type": pricing.discount.kind,
            }
        ]
        if pricing.discount
        else []
    )
    shipping = pricing.shipping
    checkout["shipping_lines"] = (
        [
            {
                "id": f"shopify-{shipping.title.replace(' ', '%20')}-{_s(shipping.price)}",
                "code": shipping.code,
                "price": _s(shipping.price_p),
                "original_shop_price": _s(shipping.price),
                "source": "shopify",
                "title": shipping.title,
                "presentment_title": shipping.title,
                "phone": None,
                "tax_lines": [],
                "applied_discounts": [],
                "carrier_identifier": None,
                "requested_fulfillment_service_id": None,
            }
        ]
        if shipping
        else []
    )


def _contact_details(rng: random.Random, buyer: _Buyer, now_ms: int) -> JSON:
    """What a checkout gains when the buyer enters email or phone and an address."""
    sms_phone = buyer.phone if buyer.sms_state == "subscribed" else None
    return {
        "email": buyer.email,
        "phone": buyer.phone if buyer.email is None or rng.random() < 0.5 else None,
        "buyer_accepts_marketing": buyer.accepts_marketing,
        "buyer_accepts_sms_marketing": sms_phone is not None,
        "sms_marketing_phone": sms_phone,
        "updated_at": _ts(now_ms),
        "billing_address": _order_address(buyer),
        "shipping_address": _order_address(buyer),
    }


def _mark_paid(order: _OrderState, now_ms: int) -> None:
    """A pending order's payment arrives."""
    order.payload["financial_status"] = "paid"
    order.payload["total_outstanding"] = "0.00"
    order.payload["updated_at"] = _ts(now_ms)


def _planned_refund(order: _OrderState, kind: str, *, rng: random.Random, ids: _Ids, now_ms: int) -> JSON:
    """The refund an order's plan holds: "full" (every item and shipping) or "partial" (part of one line)."""
    lines = order.pricing.lines
    if kind == "full":
        quantities, shipping = [line.qty for line in lines], True
    else:
        quantities, shipping = [0] * len(lines), False
        pick = rng.randrange(len(lines))
        quantities[pick] = rng.randint(1, lines[pick].qty)
    return _refund(
        order,
        ids=ids,
        now_ms=now_ms,
        quantities=quantities,
        shipping=shipping,
        restock_type="return" if order.payload["fulfillments"] else "no_restock",
        note=rng.choice(("Damaged in transit", "Wrong size", "Changed mind", None)),
    )


def _cancel(order: _OrderState, *, rng: random.Random, ids: _Ids, now_ms: int) -> JSON | None:
    """Cancel an order; returns the refund that cancelling a paid order makes (None for an unpaid one)."""
    payload = order.payload
    refund: JSON | None = None
    if payload["financial_status"] == "paid":
        # Cancelling a paid order refunds it in full, restocking the items.
        refund = _refund(
            order,
            ids=ids,
            now_ms=now_ms,
            quantities=[line.qty for line in order.pricing.lines],
            shipping=True,
            restock_type="cancel",
            note=None,
        )
    else:
        payload["financial_status"] = "voided"
        payload["total_outstanding"] = "0.00"
        for item in payload["line_items"]:
            item["fulfillable_quantity"] = 0
    stamp = _ts(now_ms)
    payload["cancelled_at"] = stamp
    payload["cancel_reason"] = rng.choices(
        ("customer", "inventory", "fraud", "declined", "other"), weights=(50, 15, 10, 10, 15)
    )[0]
    payload["closed_at"] = stamp
    payload["updated_at"] = stamp
    return refund


# ---------------------------------------------------------------------------------------------
# The store history: a discrete-event simulation
# ---------------------------------------------------------------------------------------------


@dataclass
class _OrderPlan:
    """An order's fate, drawn up front so that the configured shares hold exactly."""

    test: bool = False
    cancel: bool = False
    refund: str | None = None  # "partial" | "full"
    foreign: bool = False
    pay_later: bool = False
    fulfil: bool = True


@dataclass
class _Session:
    """One visit: cart, maybe a checkout, maybe an order."""

    buyer: _Buyer | None  # None for anonymous browsing
    kind: str  # "order" | "abandoned" | "browse"
    contact: bool  # the buyer gets as far as giving contact details
    plan: _OrderPlan | None
    qty_bump: bool = False
    currency: str = SHOP_CURRENCY
    lines: list[_Line] = field(default_factory=list)
    shown: int = 0  # lines in the cart so far
    cart: JSON = field(default_factory=dict)
    cart_created_ms: int = 0
    checkout: JSON = field(default_factory=dict)
    pricing: _Pricing | None = None


@dataclass
class _BuyerPlan:
    buyer: _Buyer
    registered: bool
    first_ms: int
    orders: int
    abandoned: int = 0
    has_address: bool = True


class _StoreHistory:
    """Plays the store forward in time; every state change emits the webhooks Shopify would send."""

    def __init__(self, *, shop: _Shop, size: StoreSize, rng: random.Random, start_ms: int,
                 keep_deliveries: bool = True) -> None:
        self.shop, self.size, self.rng, self.start_ms = shop, size, rng, start_ms
        self.keep_deliveries = keep_deliveries
        self.ids = _Ids(rng)
        self.events: list[tuple[int, int, str, bytes]] = []
        self.products: list[_Product] = []
        self.customers: list[JSON] = []
        self.orders: list[_OrderState] = []
        self.checkouts: list[JSON] = []
        self.carts: list[JSON] = []
        self.abandoned_with_contact: list[str] = []  # cart tokens
        self._queue: list[tuple[int, int, Callable[[int], None]]] = []
        self._seq = itertools.count()
        self._next_order_number = 1001
        self._taken_phones: set[str] = set()
        self._open_ms = start_ms

    # -- machinery ------------------------------------------------------------------------------

    def _at(self, when_ms: int, action: Callable[[int], None]) -> None:
        heapq.heappush(self._queue, (when_ms, next(self._seq), action))

    def _emit(self, now_ms: int, topic: str, payload: JSON) -> None:
        if self.keep_deliveries or topic in _CONSENT_TOPICS:
            self.events.append((now_ms, next(self._seq), topic, _dumps(payload)))

    def _after(self, now_ms: int, low_s: int, high_s: int) -> int:
        return _later(self.rng, now_ms, low_s, high_s)

    def run(self) -> None:
        self._plan()
        while self._queue:
            when_ms, _, action = heapq.heappop(self._queue)
            action(when_ms)
        self.events.sort(key=lambda event: (event[0], event[1]))

    # -- planning ---------------------------------------------------------------------------------

    def _plan(self) -> None:
        self._plan_catalogue()
        plans = self._plan_buyers()
        fates = iter(self._order_fates(plans))
        rng, last_session_ms = self.rng, self.start_ms + _LAST_SESSION_DAY * _DAY
        for plan in plans:
            if plan.registered:
                self._at(plan.first_ms, partial(self._customer_created, plan))
            sessions = [_Session(plan.buyer, "order", True, next(fates)) for _ in range(plan.orders)]
            sessions += [
                _Session(plan.buyer, "abandoned", rng.random() < 0.7, None) for _ in range(plan.abandoned)
            ]
            rng.shuffle(sessions)
            earliest = plan.first_ms + 10 * _MINUTE
            times = sorted(rng.randint(earliest, max(earliest, last_session_ms)) for _ in sessions)
            for index in range(1, len(times)):
                # The same person does not shop twice within a few hours.
                times[index] = max(times[index], times[index - 1] + 3 * _HOUR)
            for session, when_ms in zip(sessions, times, strict=True):
                self._at(when_ms, partial(self._cart_created, session))
        if self.products:
            for _ in range(self.size.customers // 4):
                session = _Session(None, "browse", False, None)
                self._at(rng.randint(self._open_ms, last_session_ms), partial(self._cart_created, session))

    def _plan_catalogue(self) -> None:
        rng, start = self.rng, self.start_ms
        self.products = _make_products(
            rng, self.ids, count=self.size.products, first_ms=start, shop_id=self.shop.shop_id
        )
        for product in self.products:
            created_ms = _epoch_ms(datetime.fromisoformat(product.payload["created_at"]))
            self._at(created_ms, partial(self._product_created, product))
        for product in rng.sample(self.products, k=round(len(self.products) * 0.25)):
            self._at(start + rng.randint(2 * _DAY, 85 * _DAY), partial(self._product_updated, product))
        # Shoppers arrive once the catalogue is up.
        self._open_ms = start + len(self.products) * 5 * _MINUTE + _HOUR

    def _plan_buyers(self) -> list[_BuyerPlan]:
        """Who shops, when they first show up, how many orders and abandoned checkouts each has."""
        rng, size, start, open_ms = self.rng, self.size, self.start_ms, self._open_ms
        emails: set[str] = set()
        phones = self._taken_phones
        can_order = bool(self.products)
        plans: list[_BuyerPlan] = []
        average = max(size.orders_per_customer, 0.0)
        for _ in range(size.customers):
            buyer = _make_buyer(rng, taken_emails=emails, taken_phones=phones)
            orders = round(rng.expovariate(1 / average)) if average > 0 and can_order else 0
            registered_ms = rng.randint(open_ms, max(open_ms, start + 60 * _DAY))
            plans.append(
                _BuyerPlan(buyer, True, registered_ms, orders, has_address=orders > 0 or rng.random() < 0.5)
            )
        if size.customers >= 20 and average >= 1 and can_order:
            # Every real store has a few regulars; make sure one exists whatever the draw.
            regular = max(plans, key=lambda plan: plan.orders)
            regular.orders = max(regular.orders, 10 + rng.randrange(4))
            regular.first_ms = min(regular.first_ms, open_ms + 2 * _DAY)
        for _ in range(size.guests):
            phone_only = rng.random() < 0.1
            buyer = _make_buyer(
                rng,
                taken_emails=emails,
                taken_phones=phones,
                with_email=not phone_only,
                phone_share=1.0 if phone_only else 0.5,
            )
            if phone_only and buyer.phone in _JUNK_PHONES:
                buyer.phone = _draw_number(rng, buyer.country, buyer.region, phones)[0]
            buyer.accepts_marketing = rng.random() < 0.4
            orders = rng.choices((1, 2, 3), weights=(80, 15, 5))[0] if can_order else 0
            plans.append(
                _BuyerPlan(buyer, False, rng.randint(open_ms, max(open_ms, start + 65 * _DAY)), orders)
            )
        # Abandoned checkouts are spread over all buyers so that their share of checkouts is exact.
        total_orders = sum(plan.orders for plan in plans)
        share = min(max(size.abandoned_share, 0.0), 0.9)
        for _ in range(round(total_orders * share / (1 - share)) if plans else 0):
            rng.choice(plans).abandoned += 1
        return plans

    def _order_fates(self, plans: list[_BuyerPlan]) -> list[_OrderPlan]:
        rng, size = self.rng, self.size
        owners = [plan.buyer for plan in plans for _ in range(plan.orders)]
        count = len(owners)
        fates = [_OrderPlan() for _ in owners]
        indices = list(range(count))

        def share_of(value: float) -> int:
            return min(count, round(count * min(max(value, 0.0), 1.0)))

        cancelled = set(rng.sample(indices, share_of(size.cancel_share)))
        not_cancelled = [i for i in indices if i not in cancelled]
        refunded = set(rng.sample(not_cancelled, min(len(not_cancelled), share_of(size.refund_share))))
        tests = set(rng.sample(indices, share_of(size.test_order_share)))
        # Foreign presentment currency goes first to buyers abroad, as it would in a real store.
        abroad = [i for i in indices if owners[i].country.code != "US"]
        home = [i for i in indices if owners[i].country.code == "US"]
        rng.shuffle(abroad)
        rng.shuffle(home)
        foreign = set((abroad + home)[: share_of(size.foreign_currency_share)])
        for index, fate in enumerate(fates):
            fate.cancel = index in cancelled
            fate.test = index in tests
            fate.foreign = index in foreign
            fate.refund = rng.choice(("partial", "partial", "full")) if index in refunded else None
            fate.pay_later = rng.random() < (0.5 if fate.cancel else 0.15)
            fate.fulfil = not fate.cancel and rng.random() < 0.93
        return fates

    # -- catalogue ----------------------------------------------------------------------------------

    def _product_created(self, product: _Product, now_ms: int) -> None:
        self._emit(now_ms, "products/create", product.payload)

    def _product_updated(self, product: _Product, now_ms: int) -> None:
        _touch_product(self.rng, product.payload, now_ms)
        self._emit(now_ms, "products/update", product.payload)

    # -- customers and consent ------------------------------------------------------------------

    def _customer_created(self, plan: _BuyerPlan, now_ms: int) -> None:
        rng, buyer = self.rng, plan.buyer
        customer_id = self.ids.customer()
        address_id = self.ids.address() if plan.has_address else None
        buyer.customer = _customer_payload(
            rng, buyer, customer_id=customer_id, address_id=address_id, created_ms=now_ms
        )
        self.customers.append(buyer.customer)
        self._emit(now_ms, "customers/create", buyer.customer)

        subscribed = rng.random() < 0.62
        buyer.accepts_marketing = subscribed
        double_opt_in = subscribed and rng.random() < 0.2
        level = "confirmed_opt_in" if double_opt_in else "single_opt_in"
        consent_ms = self._after(now_ms, 2, 30)
        first_state = "pending" if double_opt_in else ("subscribed" if subscribed else "not_subscribed")
        self._at(consent_ms, partial(self._email_consent, buyer, first_state, level))
        if double_opt_in:
            self._at(
                self._after(consent_ms, 300, 7200), partial(self._email_consent, buyer, "subscribed", level)
            )
        if subscribed and rng.random() < 0.1:
            self._at(
                self._after(now_ms, 3 * 86400, 25 * 86400),
                partial(self._email_consent, buyer, "unsubscribed", level),
            )
        if buyer.phone is not None:
            sms = buyer.phone not in _JUNK_PHONES and rng.random() < 0.45
            self._at(
                self._after(now_ms, 3, 40),
                partial(self._sms_consent, buyer, "subscribed" if sms else "not_subscribed"),
            )
            if sms and rng.random() < 0.1:
                self._at(
                    self._after(now_ms, 3 * 86400, 25 * 86400),
                    partial(self._sms_consent, buyer, "unsubscribed"),
                )
        if rng.random() < 0.15:
            self._at(self._after(now_ms, 86400, 25 * 86400), partial(self._customer_edited, buyer))

    def _email_consent(self, buyer: _Buyer, state: str, level: str, now_ms: int) -> None:
        assert buyer.customer is not None
        buyer.accepts_marketing = state == "subscribed"
        self._emit(
            now_ms,
            "customers_email_marketing_consent/update",
            {
                "customer_id": buyer.customer["id"],
                "email_address": buyer.email,
                "email_marketing_consent": {
                    "state": state,
                    "opt_in_level": level,
                    "consent_updated_at": None if state == "not_subscribed" else _ts(now_ms),
                },
            },
        )

    def _sms_consent(self, buyer: _Buyer, state: str, now_ms: int) -> None:
        assert buyer.customer is not None
        buyer.sms_state = state
        self._emit(
            now_ms,
            "customers_marketing_consent/update",
            {
                "id": buyer.customer["id"],
                "phone": buyer.phone,
                "sms_marketing_consent": {
                    "state": state,
                    "opt_in_level": "single_opt_in",
                    "consent_updated_at": None if state == "not_subscribed" else _ts(now_ms),
                    "consent_collected_from": "SHOPIFY",
                },
            },
        )

    def _customer_edited(self, buyer: _Buyer, now_ms: int) -> None:
        """A profile edit: a new last name, or a new or corrected phone number."""
        rng, customer = self.rng, buyer.customer
        assert customer is not None
        if rng.random() < 0.5:
            buyer.last_name = rng.choice([name for name in _LAST_NAMES if name != buyer.last_name])
            customer["last_name"] = buyer.last_name
            for address in customer["addresses"]:
                address["last_name"], address["name"] = buyer.last_name, buyer.name
            phone_changed = False
        else:
            # People with a junk or national number usually fix it to the full international form.
            if buyer.phone is not None:
                buyer.phone = _draw_number(rng, buyer.country, buyer.region, self._taken_phones)[0]
            else:
                buyer.phone = _typed_phone(rng, buyer.country, buyer.region, self._taken_phones)
            customer["phone"] = buyer.phone
            phone_changed = True
        customer["updated_at"] = _ts(now_ms)
        self._emit(now_ms, "customers/update", customer)
        if phone_changed:
            state = "subscribed" if buyer.sms_state == "subscribed" else "not_subscribed"
            self._at(self._after(now_ms, 1, 5), partial(self._sms_consent, buyer, state))

    # -- carts and checkouts ------------------------------------------------------------------------

    def _cart_created(self, session: _Session, now_ms: int) -> None:
        rng, buyer = self.rng, session.buyer
        plan = session.plan
        if plan is not None and plan.foreign and buyer is not None:
            local = buyer.country.currency
            session.currency = local if local != SHOP_CURRENCY else rng.choice(_FOREIGN_CURRENCIES)
        elif (
            plan is None
            and buyer is not None
            and buyer.country.currency != SHOP_CURRENCY
            and rng.random() < 0.3
        ):
            session.currency = buyer.country.currency
        session.lines = _new_lines(_pick_items(rng, self.products), session.currency)
        session.qty_bump = rng.random() < (0.5 if len(session.lines) == 1 else 0.2)
        session.shown = 1
        session.cart_created_ms = now_ms
        token = _new_cart_token(rng)
        session.cart = {
            "id": token,
            "token": token,
            "line_items": [],
            "note": None,
            "updated_at": _utc_ms(now_ms),
            "created_at": _utc_ms(now_ms),
        }
        self._render_cart(session, now_ms)
        self.carts.append(session.cart)
        self._emit(now_ms, "carts/create", session.cart)
        self._next_cart_step(session, now_ms)

    def _render_cart(self, session: _Session, now_ms: int) -> None:
        token = session.cart["token"]
        session.cart["line_items"] = [
            _cart_line(line, token, session.currency) for line in session.lines[: session.shown]
        ]
        # Real carts carry note null when created and "" once the storefront has saved them.
        session.cart["note"] = None if now_ms == session.cart_created_ms else ""
        session.cart["updated_at"] = _utc_ms(now_ms)

    def _next_cart_step(self, session: _Session, now_ms: int) -> None:
        if session.shown < len(session.lines) or session.qty_bump:
            self._at(self._after(now_ms, 20, 360), partial(self._cart_updated, session))
        elif session.kind != "browse":
            self._at(self._after(now_ms, 60, 300), partial(self._checkout_created, session))

    def _cart_updated(self, session: _Session, now_ms: int) -> None:
        if session.shown < len(session.lines):
            session.shown += 1
        else:
            session.lines[0].qty += 1
            session.qty_bump = False
        self._render_cart(session, now_ms)
        self._emit(now_ms, "carts/update", session.cart)
        self._next_cart_step(session, now_ms)

    def _checkout_created(self, session: _Session, now_ms: int) -> None:
        rng = self.rng
        pricing = _Pricing(session.currency, session.lines)
        _price(pricing, taxes=())
        session.pricing = pricing
        checkout_id, token = self.ids.checkout(), _hex(rng)
        buyer = session.buyer
        session.checkout = _new_checkout(
            rng,
            self.shop,
            checkout_id=checkout_id,
            token=token,
            cart_token=session.cart["token"],
            currency=session.currency,
            lines=session.lines,
            locale=buyer.locale if buyer is not None else "en",
            now_ms=now_ms,
        )
        _render_checkout_money(session.checkout, pricing, self.shop.location_id)
        self.checkouts.append(session.checkout)
        self._emit(now_ms, "checkouts/create", session.checkout)
        if session.contact:
            self._at(self._after(now_ms, 60, 240), partial(self._checkout_contact, session))

    def _checkout_contact(self, session: _Session, now_ms: int) -> None:
        """The buyer enters email or phone and an address: the checkout becomes recoverable."""
        rng, buyer, pricing, checkout = self.rng, session.buyer, session.pricing, session.checkout
        assert buyer is not None and pricing is not None
        items_usd = pricing.line_items()[0]
        discount = _choose_discount(rng, items_usd, buyer.orders_placed) if session.kind == "order" else None
        pricing.discount = discount
        pricing.shipping = _choose_shipping(rng, buyer, session.currency, items_usd)
        _price(pricing, taxes=buyer.region.taxes)
        checkout.update(_contact_details(rng, buyer, now_ms))
        if buyer.customer is not None:
            checkout["customer"] = _customer_embed(buyer.customer)
        _render_checkout_money(checkout, pricing, self.shop.location_id)
        self._emit(now_ms, "checkouts/update", checkout)
        if session.kind == "order":
            self._at(self._after(now_ms, 60, 360), partial(self._checkout_completed, session))
        else:
            self.abandoned_with_contact.append(session.cart["token"])

    def _checkout_completed(self, session: _Session, now_ms: int) -> None:
        session.checkout["completed_at"] = _ts(now_ms)
        session.checkout["updated_at"] = _ts(now_ms)
        if session.buyer is not None and session.buyer.customer is not None:
            session.checkout["customer"] = _customer_embed(session.buyer.customer)
        self._emit(now_ms, "checkouts/update", session.checkout)
        self._at(self._after(now_ms, 1, 4), partial(self._order_created, session))

    # -- orders -------------------------------------------------------------------------------------

    def _emit_order(self, now_ms: int, topics: tuple[str, ...], order: _OrderState) -> None:
        # An order's embedded customer is the customer as it is when the webhook fires.
        if order.buyer.customer is not None:
            order.payload["customer"] = _customer_embed(order.buyer.customer)
        for topic in topics:
            self._emit(now_ms, topic, order.payload)

    def _order_created(self, session: _Session, now_ms: int) -> None:
        rng, plan, buyer, pricing = self.rng, session.plan, session.buyer, session.pricing
        assert plan is not None and buyer is not None and pricing is not None
        paid = not plan.pay_later
        if plan.test:
            gateway = "bogus"
        elif paid:
            gateway = rng.choice(("shopify_payments", "shopify_payments", "shopify_payments", "paypal"))
        else:
            gateway = rng.choice(("manual", "Cash on Delivery (COD)"))
        order = _build_order(
            rng=rng,
            ids=self.ids,
            shop=self.shop,
            buyer=buyer,
            pricing=pricing,
            order_number=self._next_order_number,
            created_ms=now_ms,
            link=_CheckoutLink(session.cart["token"], session.checkout["token"], session.checkout["id"]),
            test=plan.test,
            paid=paid,
            gateway=gateway,
            landing_site=session.checkout["landing_site"],
        )
        self._next_order_number += 1
        buyer.orders_placed += 1
        self.orders.append(order)
        if paid:
            self._emit_order(now_ms, ("orders/create", "orders/paid"), order)
            self._after_payment(order, plan, now_ms)
        else:
            self._emit_order(now_ms, ("orders/create",), order)
            if plan.cancel:
                self._at(self._after(now_ms, 3600, 2 * 86400), partial(self._order_cancelled, order))
            else:
                self._at(self._after(now_ms, 2 * 3600, 3 * 86400), partial(self._order_paid, order, plan))

    def _after_payment(self, order: _OrderState, plan: _OrderPlan, now_ms: int) -> None:
        if plan.cancel:
            self._at(self._after(now_ms, 1800, 86400), partial(self._order_cancelled, order))
        elif plan.fulfil:
            self._at(self._after(now_ms, 4 * 3600, 3 * 86400), partial(self._order_fulfilled, order, plan))
        elif plan.refund:
            self._at(self._after(now_ms, 86400, 4 * 86400), partial(self._order_refunded, order, plan))

    def _order_paid(self, order: _OrderState, plan: _OrderPlan, now_ms: int) -> None:
        _mark_paid(order, now_ms)
        self._emit_order(now_ms, ("orders/paid", "orders/updated"), order)
        self._after_payment(order, plan, now_ms)

    def _order_fulfilled(self, order: _OrderState, plan: _OrderPlan, now_ms: int) -> None:
        _fulfill(order, ids=self.ids, shop=self.shop, rng=self.rng, now_ms=now_ms)
        self._emit_order(now_ms, ("orders/fulfilled", "orders/updated"), order)
        if plan.refund:
            self._at(self._after(now_ms, 2 * 86400, 14 * 86400), partial(self._order_refunded, order, plan))

    def _order_refunded(self, order: _OrderState, plan: _OrderPlan, now_ms: int) -> None:
        assert plan.refund is not None
        refund = _planned_refund(order, plan.refund, rng=self.rng, ids=self.ids, now_ms=now_ms)
        self._emit(now_ms, "refunds/create", refund)
        self._emit_order(now_ms, ("orders/updated",), order)

    def _order_cancelled(self, order: _OrderState, now_ms: int) -> None:
        refund = _cancel(order, rng=self.rng, ids=self.ids, now_ms=now_ms)
        if refund is not None:
            self._emit(now_ms, "refunds/create", refund)
        self._emit_order(now_ms, ("orders/cancelled", "orders/updated"), order)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


class SimulatedStore:
    """A seeded Shopify store whose whole history is available as webhook deliveries.

    The same arguments give the same deliveries, byte for byte (bodies, event ids, webhook ids);
    `start` defaults to midnight UTC 90 days ago, so leave it out only where "recent" matters more
    than reproducibility across days. `customers`, `products`, `orders`, `checkouts` and `carts`
    hold each resource's final state, i.e. its last webhook payload.

    The history, over 90 days from `start`:
    - products/create for the catalogue first; products/update for a quarter of it later.
    - per registered customer: customers/create, customers_email_marketing_consent/update
      (a few "pending" then "subscribed"; some "unsubscribed" weeks later) and, with a phone,
      customers_marketing_consent/update; for some a customers/update (new last name or phone,
      followed by a new SMS consent for the new phone).
    - per shopping session: carts/create, carts/update (items added, quantity raised),
      checkouts/create (email null, no customer), checkouts/update with email/phone, addresses,
      shipping, tax, discount and customer; then either nothing (abandoned; some stop before
      giving contact details) or checkouts/update with completed_at and, seconds later,
      orders/create (+ orders/paid when paid at once; else orders/paid + orders/updated hours
      later), orders/fulfilled + orders/updated, refunds/create + orders/updated for refunds,
      and for cancellations [refunds/create] + orders/cancelled + orders/updated.
    - anonymous carts that never reach a checkout.
    """

    def __init__(
        self,
        shop_domain: str = "demo-store.myshopify.com",
        *,
        size: StoreSize | None = None,
        seed: int = 7,
        start: datetime | None = None,
        keep_deliveries: bool = True,
    ) -> None:
        """`keep_deliveries=False`: a store that only serves the Admin API (a backfill benchmark at 100,000+
        customers), keeping its objects and consent changes but not every webhook of its history, which
        would take tens of gigabytes."""
        self.shop_domain = shop_domain
        self.currency = SHOP_CURRENCY
        self.size = size or StoreSize()
        self.seed = seed
        self.start = start or _default_start()
        rng = random.Random(f"shopify-sandbox:{seed}")
        shop = _Shop(
            domain=shop_domain,
            shop_id=rng.randint(55_000_000_000, 69_999_999_999),
            location_id=rng.randint(60_000_000_000, 79_999_999_999),
        )
        history = _StoreHistory(shop=shop, size=self.size, rng=rng, start_ms=_epoch_ms(self.start),
                                keep_deliveries=keep_deliveries)
        history.run()
        self._history = history
        self.customers: list[JSON] = history.customers
        self.products: list[JSON] = [product.payload for product in history.products]
        self.orders: list[JSON] = [order.payload for order in history.orders]
        self.checkouts: list[JSON] = history.checkouts
        self.carts: list[JSON] = history.carts
        # Delivery ids come from their own stream so they do not shift when the story changes.
        id_rng = random.Random(f"shopify-sandbox-deliveries:{seed}")
        self._deliveries = [
            WebhookDelivery(
                topic=topic,
                body=body,
                event_id=_uuid(id_rng),
                webhook_id=_uuid(id_rng),
                triggered_at=_utc_ms(when_ms),
            )
            for when_ms, _, topic, body in history.events
        ]

    def deliveries(self) -> Iterator[WebhookDelivery]:
        """Every webhook of the store's history, in order of X-Shopify-Triggered-At."""
        return iter(self._deliveries)

    def order_count(self) -> int:
        return len(self.orders)

    def expected(self) -> ExpectedTotals:
        """Per-buyer figures from the simulation's Decimal ledger, not from the payload strings."""
        by_email: dict[str, BuyerTotals] = {}
        by_phone: dict[str, BuyerTotals] = {}
        counted = 0
        for order in self._history.orders:
            payload = order.payload
            email, phone = payload["email"], payload["phone"]
            table, key = (by_email, email) if email else (by_phone, phone or "")
            before = table.get(key, BuyerTotals(0, ZERO))
            if payload["test"] or payload["cancelled_at"] is not None:
                table[key] = before
                continue
            counted += 1
            table[key] = BuyerTotals(before.order_count + 1, before.total_spent + order.net_total()[0])
        revenue = sum((totals.total_spent for totals in (*by_email.values(), *by_phone.values())), ZERO)
        tokens = frozenset(self._history.abandoned_with_contact)
        return ExpectedTotals(
            buyers=by_email,
            phone_buyers=by_phone,
            abandoned_checkouts=len(tokens),
            abandoned_cart_tokens=tokens,
            orders=len(self._history.orders),
            counted_orders=counted,
            revenue=revenue,
        )


def _indexed_buyer(seed: int, index: int, start_ms: int, ids_base: int) -> _Buyer:
    """Buyer number `index` of a benchmark, rebuilt from its index alone so nothing is kept in memory."""
    rng = random.Random(f"many-orders:{seed}:buyer:{index}")
    buyer = _make_buyer(rng, taken_emails=None, email_number=index)
    buyer.accepts_marketing = rng.random() < 0.6
    customer_id = ids_base + index * 1_009
    buyer.customer = _customer_payload(
        rng,
        buyer,
        customer_id=customer_id,
        address_id=customer_id + 1_000_000_000_000,
        created_ms=start_ms - rng.randint(1, 400) * _DAY,
    )
    return buyer


def many_orders(
    shop_domain: str, n: int, *, seed: int = 1, customers: int | None = None, start: datetime | None = None
) -> Iterator[WebhookDelivery]:
    """`n` orders/create deliveries for benchmarks, over `customers` registered buyers (default n // 2).

    Generated lazily: memory stays flat whatever `n` is. Each body is a full order like Shopify's
    sample (2-3 line items with tax lines, addresses, shipping line, embedded customer), 7-8.8 KB.
    Phones are not kept unique across buyers here (that would need memory proportional to them).
    """
    rng = random.Random(f"many-orders:{seed}")
    ids = _Ids(rng)
    shop = _Shop(
        domain=shop_domain,
        shop_id=rng.randint(55_000_000_000, 69_999_999_999),
        location_id=rng.randint(60_000_000_000, 79_999_999_999),
    )
    start_ms = _epoch_ms(start or _default_start())
    products = _make_products(rng, ids, count=30, first_ms=start_ms, shop_id=shop.shop_id)
    buyers = max(1, customers if customers is not None else n // 2)
    now_ms = start_ms + _DAY
    for number in range(n):
        buyer = _indexed_buyer(seed, rng.randrange(buyers), start_ms, 7_100_000_000_000)
        now_ms += rng.randint(1_000, 30_000)
        currency = SHOP_CURRENCY
        if rng.random() < 0.1:
            local = buyer.country.currency
            currency = local if local != SHOP_CURRENCY else rng.choice(_FOREIGN_CURRENCIES)
        items = _pick_items(rng, products, count=3 if rng.random() < 0.25 else 2)
        link = _CheckoutLink(_new_cart_token(rng), _hex(rng), ids.checkout())
        discount_roll = rng.randint(0, 4)
        while True:
            pricing = _Pricing(currency, _new_lines(items, currency))
            items_usd = pricing.line_items()[0]
            pricing.discount = _choose_discount(rng, items_usd, previous_orders=discount_roll)
            pricing.shipping = _choose_shipping(rng, buyer, currency, items_usd)
            _price(pricing, taxes=buyer.region.taxes)
            order = _build_order(
                rng=rng,
                ids=ids,
                shop=shop,
                buyer=buyer,
                pricing=pricing,
                order_number=1001 + number,
                created_ms=now_ms,
                link=link,
                test=False,
                paid=True,
                gateway="shopify_payments",
                landing_site="/",
            )
            body = _dumps(order.payload)
            # Keep bodies in the 6-9 KB band of real orders: a third line can tip a taxed,
            # discounted order over it, so such an order loses its last line.
            if len(body) <= _MANY_ORDERS_MAX_BODY or len(items) == 1:
                break
            items = items[:-1]
        yield WebhookDelivery(
            topic="orders/create",
            body=body,
            event_id=_uuid(rng),
            webhook_id=_uuid(rng),
            triggered_at=_utc_ms(now_ms),
        )


# ---------------------------------------------------------------------------------------------
# A large store for benchmarks: every object rebuilt from its index, bulk files written in advance
# ---------------------------------------------------------------------------------------------

_LARGE_DAYS = 400  # orders are spread over the 400 days before the store's `start`
# Orders stop this long before `start`, so that their follow-ups land before it too: paid up to 3 days
# later, fulfilled up to 3 days after that, refunded up to 14 days after that.
_LARGE_QUIET_DAYS = 21
# Phones spell their buyer's index; North American numbers have room for this many.
_LARGE_MAX_BUYERS = 8_000_000
_LARGE_CUSTOMER_IDS = 7_012_000_000_000
_LARGE_CHECKOUT_IDS = 36_900_000_000_000  # abandoned checkouts; those of orders come from the orders' id slots
_BULK_ROOTS = ("customers", "products", "orders", "abandonedCheckouts")


def _indexed_phone(rng: random.Random, country: _Country, region: _Region, index: int) -> tuple[str, str]:
    """(E.164, national) forms of buyer number `index`'s phone: the index is spelled in the subscriber digits,
    so no two buyers share a number. Unlike SimulatedStore's, these numbers are not in the ranges kept for
    fiction (100 to 10,000 numbers per area, too few for a large store); every one is valid for its country."""
    area = rng.choice(region.area_codes)
    digits = f"{index:08d}"
    if country.code in ("US", "CA"):
        digits = f"{200 + index // 10_000}{index % 10_000:04d}"
        return f"+1{area}{digits}", f"({area}) {digits[:3]}-{digits[3:]}"
    if country.code == "GB":
        digits = f"7{index:07d}"
        return f"+4420{digits}", f"020 {digits[:4]} {digits[4:]}"
    if country.code == "FR":
        return f"+331{digits}", "01 " + " ".join(digits[i : i + 2] for i in range(0, 8, 2))
    if country.code == "DE":
        return f"+4930{digits}", f"030 {digits}"
    return f"+614{digits}", f"04{digits[:2]} {digits[2:5]} {digits[5:]}"


@dataclass(frozen=True)
class _LargeBuyer:
    """Buyer number `index` of a LargeStore as far as counting goes: cheap to draw, so that the store knows its
    sizes without building a payload."""

    index: int
    registered: bool
    first_ms: int  # sign-up, or a guest's first visit
    order_ms: tuple[int, ...]  # when each of their orders is placed, oldest first
    abandoned_ms: int | None  # when they left a checkout unfinished, for a few customers


class LazyObjects:
    """A resource's payloads, rebuilt from seeds on every pass: re-iterable and sized, never held in memory."""

    def __init__(self, generate: Callable[[], Iterator[JSON]], length: int) -> None:
        self._generate = generate
        self._length = length

    def __iter__(self) -> Iterator[JSON]:
        return self._generate()

    def __len__(self) -> int:
        return self._length


class LargeStore:
    """A seeded store of any size whose memory stays flat: each object is rebuilt from the seed and its index
    whenever it is read, and the Admin API's bulk files are written to a temporary folder once, when the store
    is built. For backfill benchmarks (100,000 customers and more); `SimulatedStore` plays a history instead.

    The same arguments give the same objects and files, byte for byte; `start` (the end of the store's
    history, "now" for it) defaults to today's midnight UTC, so pass it where runs must match across days.
    `customers`, `orders` and `checkouts` are `LazyObjects` (each pass builds every payload again: a few
    thousand orders a second), `products` a list. Objects are in their webhook (REST) shape, API 2026-01.

    What is in it:
    - `customers` registered customers, each with an email and most (85%) with a phone, spelled from the
      customer's index so that no two share one (mostly E.164, some in national form); created over the 400
      days before `start`. Their consent rides on the payload as `email_marketing_consent` and
      `sms_marketing_consent` (the shape of the consent webhooks; Shopify dropped these fields from customer
      payloads, and the simulated Admin API reads them as the customer's current consent): email 62%
      subscribed (a tenth later unsubscribed, a few double opt-ins still pending), SMS 45% subscribed.
    - `guests` buyers (default customers // 10) who order with an email and no account: 1 to 3 orders each.
    - about `orders_per_customer` orders per customer (exponentially spread: some none, some 10 and more),
      each with 1 to 3 lines, tax by region, a discount for about one in five, shipping; placed between the
      customer's sign-up and three weeks before `start`, with their later life applied: 4% cancelled (a full
      refund when already paid), 8% refunded (a third in full), 1% test, 10% in a foreign presentment
      currency, most fulfilled.
    - an abandoned checkout (with email, lines and addresses, never completed) for 5% of customers, in the
      month before `start`.
    - `products` (default 200) made as SimulatedStore makes its catalogue.
    `deliveries()` is empty: no webhook history is kept.
    """

    ABANDONED_SHARE = 0.05
    REFUND_SHARE = 0.08
    CANCEL_SHARE = 0.04
    TEST_ORDER_SHARE = 0.01
    FOREIGN_CURRENCY_SHARE = 0.1

    def __init__(
        self,
        shop_domain: str = "demo-store.myshopify.com",
        *,
        customers: int,
        guests: int | None = None,
        products: int = 200,
        orders_per_customer: float = 5.0,
        seed: int = 7,
        start: datetime | None = None,
        bulk_files: bool = True,
    ) -> None:
        """`bulk_files=False`: no files written in advance (the simulated Admin API then writes each bulk
        operation's file from the lazy objects, as for any store)."""
        guests = customers // 10 if guests is None else guests
        if customers < 0 or guests < 0 or customers + guests > _LARGE_MAX_BUYERS:
            raise ValueError(f"a LargeStore holds 0 to {_LARGE_MAX_BUYERS:,} customers and guests")
        self.shop_domain = shop_domain
        self.currency = SHOP_CURRENCY
        self.seed = seed
        self.start = start or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        self._registered, self._buyers = customers, customers + guests
        self._end_ms = _epoch_ms(self.start)
        self._per_customer = max(orders_per_customer, 0.0)
        rng = random.Random(f"large-store:{seed}")
        self._shop = _Shop(
            domain=shop_domain,
            shop_id=rng.randint(55_000_000_000, 69_999_999_999),
            location_id=rng.randint(60_000_000_000, 79_999_999_999),
        )
        self._products = _make_products(
            rng,
            _Ids(rng),
            count=products,
            first_ms=self._end_ms - (_LARGE_DAYS + 10) * _DAY,
            shop_id=self._shop.shop_id,
        )
        self.products: list[JSON] = [product.payload for product in self._products]
        orders = checkouts = 0
        for buyer in self._plans():
            orders += len(buyer.order_ms)
            checkouts += buyer.abandoned_ms is not None
        self.customers = LazyObjects(self._customers, customers)
        self.orders = LazyObjects(self._orders, orders)
        self.checkouts = LazyObjects(self._checkouts, checkouts)
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._files: dict[str, BulkFile] = {}
        if bulk_files:
            self._write_bulk_files()

    def deliveries(self) -> Iterator[WebhookDelivery]:
        """No webhook history: consent is on the customer payloads."""
        return iter(())

    def order_count(self) -> int:
        return len(self.orders)

    def bulk_file(self, root: str, search: str | None, nested: bool) -> BulkFile | None:
        """The file written in advance for a bulk query over a whole connection (`customers`, `orders`,
        `products`, `abandonedCheckouts`); None for a search, or for a query that leaves out the nested rows
        the file holds."""
        if search or (not nested and root in NESTED):
            return None
        return self._files.get(root)

    def close(self) -> None:
        """Remove the bulk files (also done when the store is garbage-collected)."""
        if self._folder is not None:
            self._folder.cleanup()
            self._folder, self._files = None, {}

    # -- the files, once -----------------------------------------------------------------------------

    def _write_bulk_files(self) -> None:
        """Each connection's file exactly as the simulated Admin API would write it, children one parent late."""
        self._folder = tempfile.TemporaryDirectory(prefix="shopify-large-store-")
        resources: dict[str, Iterable[JSON]] = {
            "customers": self.customers,
            "products": self.products,
            "orders": self.orders,
            "abandonedCheckouts": self.checkouts,
        }
        for root in _BULK_ROOTS:
            path = os.path.join(self._folder.name, f"{root}.jsonl")
            with open(path, "wb", buffering=1 << 20) as out:
                objects, roots = write_bulk(root, resources[root], None, Consents(), out)
            self._files[root] = BulkFile(path, objects, roots)

    # -- buyers ----------------------------------------------------------------------------------------

    def _plans(self) -> Iterator[_LargeBuyer]:
        return (self._plan(index) for index in range(self._buyers))

    def _plan(self, index: int) -> _LargeBuyer:
        rng = random.Random(f"large-store:{self.seed}:plan:{index}")
        registered = index < self._registered
        last_ms = self._end_ms - _LARGE_QUIET_DAYS * _DAY
        first_ms = rng.randint(self._end_ms - _LARGE_DAYS * _DAY, last_ms - _DAY)
        if registered:
            count = round(rng.expovariate(1 / self._per_customer)) if self._per_customer and self._products else 0
        else:
            count = rng.choices((1, 2, 3), weights=(80, 15, 5))[0] if self._products else 0
        order_ms = tuple(sorted(rng.randint(first_ms + 10 * _MINUTE, last_ms) for _ in range(count)))
        abandoned_ms = None
        if registered and self._products and rng.random() < self.ABANDONED_SHARE:
            abandoned_ms = rng.randint(max(first_ms, self._end_ms - 30 * _DAY), self._end_ms - _HOUR)
        return _LargeBuyer(index, registered, first_ms, order_ms, abandoned_ms)

    def _buyer(self, plan: _LargeBuyer) -> _Buyer:
        """The buyer, with their customer payload (consent included) when registered."""
        rng = random.Random(f"large-store:{self.seed}:buyer:{plan.index}")
        buyer = _make_buyer(rng, taken_emails=None, email_number=plan.index + 1, phone_share=0.0)
        if rng.random() < (0.85 if plan.registered else 0.5):
            e164, national = _indexed_phone(rng, buyer.country, buyer.region, plan.index)
            buyer.phone = e164 if rng.random() < 0.8 else national
        if not plan.registered:
            buyer.accepts_marketing = rng.random() < 0.4
            return buyer
        customer_id = _LARGE_CUSTOMER_IDS + plan.index * 1_009
        has_address = bool(plan.order_ms) or rng.random() < 0.5
        customer = _customer_payload(
            rng,
            buyer,
            customer_id=customer_id,
            address_id=customer_id + 1_000_000_000_000 if has_address else None,
            created_ms=plan.first_ms,
        )
        subscribed, double_opt_in = rng.random() < 0.62, rng.random() < 0.2
        email_state, email_ms = "subscribed" if subscribed else "not_subscribed", _later(rng, plan.first_ms, 2, 30)
        if subscribed and double_opt_in and rng.random() < 0.1:
            email_state = "pending"  # the confirmation email was never clicked
        elif subscribed and rng.random() < 0.1:
            email_state, email_ms = "unsubscribed", _later(rng, email_ms, 86400, 14 * 86400)
        buyer.accepts_marketing = email_state == "subscribed"
        customer["email_marketing_consent"] = {
            "state": email_state,
            "opt_in_level": "confirmed_opt_in" if subscribed and double_opt_in else "single_opt_in",
            "consent_updated_at": None if email_state == "not_subscribed" else _ts(email_ms),
        }
        changed_ms = email_ms
        if buyer.phone is not None:
            sms, sms_ms = rng.random() < 0.45, _later(rng, plan.first_ms, 3, 40)
            buyer.sms_state = "subscribed" if sms else "not_subscribed"
            if sms and rng.random() < 0.1:
                buyer.sms_state, sms_ms = "unsubscribed", _later(rng, sms_ms, 86400, 14 * 86400)
            customer["sms_marketing_consent"] = {
                "state": buyer.sms_state,
                "opt_in_level": "single_opt_in",
                "consent_updated_at": None if buyer.sms_state == "not_subscribed" else _ts(sms_ms),
                "consent_collected_from": "SHOPIFY",
            }
            changed_ms = max(changed_ms, sms_ms)
        customer["updated_at"] = _ts(changed_ms)
        buyer.customer = customer
        return buyer

    def _customers(self) -> Iterator[JSON]:
        for index in range(self._registered):
            customer = self._buyer(self._plan(index)).customer
            assert customer is not None
            yield customer

    # -- orders ----------------------------------------------------------------------------------------

    def _orders(self) -> Iterator[JSON]:
        number = 0  # orders are numbered in the order they are listed: buyer by buyer, oldest first
        for plan in self._plans():
            if not plan.order_ms:
                continue
            buyer = self._buyer(plan)
            for position, created_ms in enumerate(plan.order_ms):
                yield self._order(buyer, plan.index, position, number, created_ms)
                number += 1

    def _fate(self, rng: random.Random) -> _OrderPlan:
        cancel = rng.random() < self.CANCEL_SHARE
        refund = None
        if not cancel and rng.random() < self.REFUND_SHARE / (1 - self.CANCEL_SHARE):
            refund = rng.choice(("partial", "partial", "full"))
        return _OrderPlan(
            test=rng.random() < self.TEST_ORDER_SHARE,
            cancel=cancel,
            refund=refund,
            foreign=rng.random() < self.FOREIGN_CURRENCY_SHARE,
            pay_later=rng.random() < (0.5 if cancel else 0.15),
            fulfil=not cancel and rng.random() < 0.93,
        )

    def _order(self, buyer: _Buyer, index: int, position: int, number: int, created_ms: int) -> JSON:
        """Order `position` of buyer `index` (store-wide number `number`), in its final state."""
        rng = random.Random(f"large-store:{self.seed}:order:{index}:{position}")
        ids = _Ids(rng, slot=number)
        fate = self._fate(rng)
        currency = SHOP_CURRENCY
        if fate.foreign:
            local = buyer.country.currency
            currency = local if local != SHOP_CURRENCY else rng.choice(_FOREIGN_CURRENCIES)
        items = _pick_items(rng, self._products, count=rng.choices((1, 2, 3), weights=(50, 32, 18))[0])
        pricing = _Pricing(currency, _new_lines(items, currency))
        items_usd = pricing.line_items()[0]
        pricing.discount = _choose_discount(rng, items_usd, previous_orders=position)
        pricing.shipping = _choose_shipping(rng, buyer, currency, items_usd)
        _price(pricing, taxes=buyer.region.taxes)
        if fate.test:
            gateway = "bogus"
        elif not fate.pay_later:
            gateway = rng.choice(("shopify_payments", "shopify_payments", "shopify_payments", "paypal"))
        else:
            gateway = rng.choice(("manual", "Cash on Delivery (COD)"))
        order = _build_order(
            rng=rng,
            ids=ids,
            shop=self._shop,
            buyer=buyer,
            pricing=pricing,
            order_number=1001 + number,
            created_ms=created_ms,
            link=_CheckoutLink(_new_cart_token(rng), _hex(rng), ids.checkout()),
            test=fate.test,
            paid=not fate.pay_later,
            gateway=gateway,
            landing_site=f"/products/{items[0][0]['handle']}",
        )
        self._live(order, fate, rng, ids, created_ms)
        return order.payload

    def _live(self, order: _OrderState, fate: _OrderPlan, rng: random.Random, ids: _Ids, now_ms: int) -> None:
        """What happens to an order after it is placed, as SimulatedStore plays it, applied at once."""
        if fate.pay_later:
            if fate.cancel:
                _cancel(order, rng=rng, ids=ids, now_ms=_later(rng, now_ms, 3600, 2 * 86400))
                return
            now_ms = _later(rng, now_ms, 2 * 3600, 3 * 86400)
            _mark_paid(order, now_ms)
        if fate.cancel:
            _cancel(order, rng=rng, ids=ids, now_ms=_later(rng, now_ms, 1800, 86400))
        elif fate.fulfil:
            now_ms = _later(rng, now_ms, 4 * 3600, 3 * 86400)
            _fulfill(order, ids=ids, shop=self._shop, rng=rng, now_ms=now_ms)
            if fate.refund:
                _planned_refund(order, fate.refund, rng=rng, ids=ids, now_ms=_later(rng, now_ms, 2 * 86400, 14 * 86400))
        elif fate.refund:
            _planned_refund(order, fate.refund, rng=rng, ids=ids, now_ms=_later(rng, now_ms, 86400, 4 * 86400))

    # -- abandoned checkouts -----------------------------------------------------------------------------

    def _checkouts(self) -> Iterator[JSON]:
        for plan in self._plans():
            if plan.abandoned_ms is None:
                continue
            buyer = self._buyer(plan)
            assert buyer.customer is not None
            rng = random.Random(f"large-store:{self.seed}:checkout:{plan.index}")
            local = buyer.country.currency
            currency = local if local != SHOP_CURRENCY and rng.random() < 0.3 else SHOP_CURRENCY
            lines = _new_lines(_pick_items(rng, self._products), currency)
            checkout = _new_checkout(
                rng,
                self._shop,
                checkout_id=_LARGE_CHECKOUT_IDS + plan.index * 1_009 + rng.randrange(1_000),
                token=_hex(rng),
                cart_token=_new_cart_token(rng),
                currency=currency,
                lines=lines,
                locale=buyer.locale,
                now_ms=plan.abandoned_ms,
            )
            pricing = _Pricing(currency, lines)
            pricing.shipping = _choose_shipping(rng, buyer, currency, pricing.line_items()[0])
            _price(pricing, taxes=buyer.region.taxes)
            checkout.update(_contact_details(rng, buyer, _later(rng, plan.abandoned_ms, 60, 240)))
            checkout["customer"] = _customer_embed(buyer.customer)
            _render_checkout_money(checkout, pricing, self._shop.location_id)
            yield checkout


# ---------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------


class WebhookSender:
    """Posts deliveries to the connector like Shopify: signed, JSON, retried on failure."""

    def __init__(
        self,
        base_url: str,
        *,
        shop_domain: str,
        secret: str,
        client: httpx.Client | None = None,
        path: str = "/webhooks/shopify",
        api_version: str = API_VERSION,
        max_retries: int = 3,
        retry_delay: float = 0.05,
    ) -> None:
        self.url = base_url.rstrip("/") + "/" + path.lstrip("/")
        self.shop_domain = shop_domain
        self.secret = secret
        self.api_version = api_version
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self._owns_client = client is None
        # Shopify gives up on a delivery after 5 s.
        self.client = client if client is not None else httpx.Client(timeout=5.0)

    def send(self, delivery: WebhookDelivery) -> httpx.Response:
        headers = delivery.headers(
            shop_domain=self.shop_domain, secret=self.secret, api_version=self.api_version
        )
        return self.client.post(self.url, content=delivery.body, headers=headers)

    def send_with_retries(self, delivery: WebhookDelivery) -> httpx.Response:
        """Send; on a non-2xx answer or a transport error retry up to `max_retries` times.

        Each retry is the same event (same X-Shopify-Event-Id) under a new X-Shopify-Webhook-Id.
        Returns the last response; re-raises the transport error if the last attempt had one.
        """
        attempt_delivery = delivery
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.retry_delay * attempt)
                attempt_delivery = delivery.redelivered(attempt)
            try:
                response = self.send(attempt_delivery)
            except httpx.TransportError:
                if attempt == self.max_retries:
                    raise
                continue
            if response.is_success or attempt == self.max_retries:
                return response
        raise AssertionError("unreachable: the loop returns or raises on its last attempt")

    def send_all(
        self,
        deliveries: Iterable[WebhookDelivery],
        *,
        on_sent: Callable[[WebhookDelivery, httpx.Response], None] | None = None,
    ) -> list[httpx.Response]:
        """Send each delivery in turn, with retries; `on_sent` sees the original delivery and final answer."""
        responses = []
        for delivery in deliveries:
            response = self.send_with_retries(delivery)
            if on_sent is not None:
                on_sent(delivery, response)
            responses.append(response)
        return responses

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
