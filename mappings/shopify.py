"""Shopify webhook payloads -> mirror records (frozen values). Pure: no I/O, no database."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from mappings.identity import contact_key_for, normalise_email, normalise_phone


class PayloadError(ValueError):
    """The payload does not have the shape Shopify documents; it is kept with this message."""


# --- field readers: each raises PayloadError naming the field ---------------------------------
# A JSON object arrives as a dict: it is checked as one (an `isinstance(..., Mapping)` check, through the ABC
# machinery, cost about a sixth of reading an order).


def _id(payload: Mapping[str, Any], key: str = "id", *, gid_key: str | None = "admin_graphql_api_id",
        required: bool = True) -> int | None:
    # The GID is exact even when a JSON tool rounded the numeric id past 2**53.
    if gid_key and isinstance(payload.get(gid_key), str):
        tail = payload[gid_key].rsplit("/", 1)[-1].split("?", 1)[0]
        if tail.isdigit():
            return int(tail)
    value = payload.get(key)
    if value is None:
        if required:
            raise PayloadError(f"missing '{key}'")
        return None
    return as_id(value, key)


def as_id(value: Any, name: str) -> int:
    if isinstance(value, (bool, float)):
        raise PayloadError(f"'{name}' must be an integer id, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        tail = value.rsplit("/", 1)[-1]
        if tail.isdigit():
            return int(tail)
    raise PayloadError(f"'{name}' must be an integer id, got {value!r}")


# Amounts read so far, by their text: the same amount is one (immutable) object however often it is read. A
# shop's prices and zeros repeat order after order (a chunk of 1,000 history orders names about 9,500 amounts, 2,300
# of them distinct), and pickling a chunk from the process that reads it to the one that applies it writes an
# object once and then only refers to it: the amounts were half of the chunk's pickling. Emptied when full.
_AMOUNTS: dict[str, Decimal] = {}
_AMOUNTS_MAX = 16_384
_ZERO = Decimal("0")


def money(value: Any, name: str) -> Decimal:
    if type(value) is str and (known := _AMOUNTS.get(value)) is not None:
        return known
    if value is None or value == "":
        return _ZERO
    if isinstance(value, (bool, float)):
        raise PayloadError(f"'{name}' must be a decimal string, got {value!r}")
    try:
        amount = Decimal(value if type(value) is str else str(value))
    except InvalidOperation:
        raise PayloadError(f"'{name}' must be a decimal amount, got {value!r}") from None
    if not amount.is_finite():
        raise PayloadError(f"'{name}' must be a finite amount, got {value!r}")
    if type(value) is str:
        if len(_AMOUNTS) >= _AMOUNTS_MAX:
            _AMOUNTS.clear()
        _AMOUNTS[value] = amount
    return amount


def shop_money(payload: Mapping[str, Any], key: str) -> Decimal:
    """The shop-currency amount of `key` (`key_set.shop_money` when present, else the plain field)."""
    money_set = payload.get(f"{key}_set")
    if isinstance(money_set, dict) and isinstance(money_set.get("shop_money"), dict):
        return money(money_set["shop_money"].get("amount"), f"{key}_set.shop_money.amount")
    return money(payload.get(key), key)


def _shop_currency(payload: Mapping[str, Any], key: str) -> str | None:
    money_set = payload.get(f"{key}_set")
    if isinstance(money_set, dict) and isinstance(money_set.get("shop_money"), dict):
        code = money_set["shop_money"].get("currency_code")
        return str(code) if code else None
    return None


def timestamp(value: Any, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(f"'{name}' must be an ISO-8601 timestamp, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PayloadError(f"'{name}' is not an ISO-8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        raise PayloadError(f"'{name}' has no UTC offset: {value!r}")
    return parsed.astimezone(UTC)


def _text(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is None:
        return None
    if type(value) is str:  # nearly always: no conversion
        return value.strip() or None
    if isinstance(value, (dict, list)):
        raise PayloadError(f"'{key}' must be text, got {type(value).__name__}")
    text = str(value).strip()
    return text or None


def _quantity(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PayloadError(f"'{name}' must be an integer quantity, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise PayloadError(f"'{name}' must be an integer quantity, got {value!r}") from None


def _object(payload: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PayloadError(f"'{key}' must be an object")
    return value


def _list(payload: Mapping[str, Any], key: str) -> list[Any]:
    value = payload.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"'{key}' must be a list")
    return value


# --- records --------------------------------------------------------------------------------


class CustomerRecord(NamedTuple):
    customer_id: int
    email: str | None
    phone: str | None  # E.164 when it could be normalised, else None
    raw_phone: str | None
    first_name: str | None
    last_name: str | None
    locale: str | None
    country_code: str | None
    city: str | None
    state: str | None
    tags: str | None
    email_consent: ConsentRecord | None
    sms_consent: ConsentRecord | None
    created_at: datetime | None
    updated_at: datetime | None
    note: str | None = None
    birthday: str | None = None  # YYYY-MM-DD, or --MM-DD when the year is unknown

    @property
    def contact_key(self) -> str:
        return contact_key_for(customer_id=self.customer_id, email=self.email, phone=self.phone)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CustomerRecord:
        address = _object(payload, "default_address") or {}
        country = _text(address, "country_code")
        raw_phone = _text(payload, "phone") or _text(address, "phone")
        email_consent = _object(payload, "email_marketing_consent")
        sms_consent = _object(payload, "sms_marketing_consent")
        tags = payload.get("tags")
        return cls(
            customer_id=_id(payload) or 0,
            email=normalise_email(_text(payload, "email")),
            phone=normalise_phone(raw_phone, country),
            raw_phone=raw_phone,
            first_name=_text(payload, "first_name"),
            last_name=_text(payload, "last_name"),
            locale=_text(payload, "locale"),
            country_code=country.upper() if country else None,
            city=_text(address, "city"),
            state=_text(payload, "state"),
            tags=", ".join(tags) if isinstance(tags, list) else (str(tags) if tags else None),
            email_consent=_known(ConsentRecord.from_consent("email", email_consent)) if email_consent else None,
            sms_consent=_known(ConsentRecord.from_consent("sms", sms_consent)) if sms_consent else None,
            created_at=timestamp(payload.get("created_at"), "created_at"),
            updated_at=timestamp(payload.get("updated_at"), "updated_at"),
            note=_text(payload, "note"),
            birthday=_metafield_birthday(payload) or birthday_from(_text(payload, "note"), tags),
        )


_BIRTHDAY = re.compile(r"(?:birthday|birthdate|date of birth|dob)\s*[:=]?\s*(\d{4}-\d{2}-\d{2}|-{0,2}\d{2}-\d{2})",
                       re.IGNORECASE)


def _metafield_birthday(payload: Mapping[str, Any]) -> str | None:
    """Shopify's standard customer birthday metafield (`facts.birth_date`, a date), which GraphQL reads carry
    as `birth_date` (webhooks carry no metafields)."""
    value = _text(payload, "birth_date")
    if value is None:
        return None
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        raise PayloadError(f"'birth_date' is not a date: {value!r}") from None


def birthday_from(note: str | None, tags: Any) -> str | None:
    """A birthday a merchant wrote down: `birthday: 1990-05-12` (or `--05-12`, or `05-12`) in the customer
    note or as a tag. Day/month orders other than ISO's are ambiguous and ignored, not guessed."""
    texts = [note or ""] + (list(tags) if isinstance(tags, list) else str(tags or "").split(","))
    for text in texts:
        match = _BIRTHDAY.search(str(text))
        if not match:
            continue
        value = match.group(1).lstrip("-")
        year, month_day = (value[:4], value[5:]) if len(value) == 10 else (None, value)
        try:
            date.fromisoformat(f"{year or 2000}-{month_day}")  # 2000 is a leap year: 02-29 is a real birthday
        except ValueError:
            continue
        return f"{year}-{month_day}" if year else f"--{month_day}"
    return None


class ConsentRecord(NamedTuple):
    channel: str  # email | sms
    state: str  # subscribed | not_subscribed | unsubscribed | pending | redacted | invalid
    opt_in_level: str | None
    updated_at: datetime | None
    customer_id: int | None = None
    address: str | None = None  # the email address or phone the consent is about

    @property
    def opted_out(self) -> bool:
        return self.state in {"unsubscribed", "redacted", "invalid"}

    @classmethod
    def from_consent(cls, channel: str, consent: Mapping[str, Any], **extra: Any) -> ConsentRecord:
        # Shopify's own samples carry a null state: that says nothing, and is applied as nothing.
        state = _text(consent, "state") or ""
        return cls(channel=channel, state=state.lower(), opt_in_level=_text(consent, "opt_in_level"),
                   updated_at=timestamp(consent.get("consent_updated_at"), "consent_updated_at"), **extra)

    @classmethod
    def from_email_topic(cls, payload: Mapping[str, Any]) -> ConsentRecord:
        """`customers_email_marketing_consent/update`: {customer_id, email_address, email_marketing_consent}."""
        consent = _object(payload, "email_marketing_consent")
        if consent is None:
            raise PayloadError("missing 'email_marketing_consent'")
        return cls.from_consent("email", consent, customer_id=_id(payload, "customer_id", gid_key=None),
                                address=normalise_email(_text(payload, "email_address")))

    @classmethod
    def from_sms_topic(cls, payload: Mapping[str, Any]) -> ConsentRecord:
        """`customers_marketing_consent/update` (SMS): {id, phone, sms_marketing_consent}."""
        consent = _object(payload, "sms_marketing_consent")
        if consent is None:
            raise PayloadError("missing 'sms_marketing_consent'")
        return cls.from_consent("sms", consent, customer_id=_id(payload, "id", gid_key=None),
                                address=_text(payload, "phone"))


def _known(consent: ConsentRecord) -> ConsentRecord | None:
    return consent if consent.state else None


class LineRecord(NamedTuple):
    line_id: int
    product_id: int | None
    variant_id: int | None
    title: str | None
    variant_title: str | None
    sku: str | None
    vendor: str | None
    quantity: int
    price: Decimal  # unit price, shop currency
    total_discount: Decimal

    @classmethod
    def from_payload(cls, line: Mapping[str, Any], index: int) -> LineRecord:
        where = f"line_items[{index}]"
        try:
            return cls(
                line_id=_id(line) or 0,
                product_id=as_id(line["product_id"], "product_id") if line.get("product_id") is not None else None,
                variant_id=as_id(line["variant_id"], "variant_id") if line.get("variant_id") is not None else None,
                title=_text(line, "title") or _text(line, "name"),
                variant_title=_text(line, "variant_title"),
                sku=_text(line, "sku"),
                vendor=_text(line, "vendor"),
                quantity=_quantity(line.get("quantity", 0), "quantity"),
                price=shop_money(line, "price"),
                total_discount=shop_money(line, "total_discount"),
            )
        except PayloadError as exc:
            raise PayloadError(f"{where}: {exc}") from None


class OrderRecord(NamedTuple):
    order_id: int
    customer_id: int | None
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    name: str | None
    order_number: int | None
    currency: str | None
    presentment_currency: str | None
    subtotal: Decimal
    total: Decimal
    total_tax: Decimal
    total_discounts: Decimal
    total_shipping: Decimal
    financial_status: str | None
    fulfillment_status: str | None
    test: bool
    cart_token: str | None
    checkout_token: str | None
    checkout_id: int | None
    discount_codes: tuple[str, ...]
    order_status_url: str | None
    created_at: datetime | None
    cancelled_at: datetime | None
    updated_at: datetime | None
    lines: tuple[LineRecord, ...]
    refunds: tuple[RefundRecord, ...] = ()
    customer: CustomerRecord | None = None
    source_name: str | None = None
    tags: str | None = None
    subscription: bool = False
    rebill: bool = False
    fulfilled_at: datetime | None = None
    country_code: str | None = None
    city: str | None = None
    locale: str | None = None
    points_basis: Decimal | None = None  # what loyalty points are earned on: subtotal after discounts, no tax

    @property
    def contact_key(self) -> str | None:
        try:
            return contact_key_for(customer_id=self.customer_id, email=self.email, phone=self.phone)
        except ValueError:
            return None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> OrderRecord:
        customer_payload = _object(payload, "customer")
        customer = CustomerRecord.from_payload(customer_payload) if customer_payload and (
            customer_payload.get("id") or customer_payload.get("admin_graphql_api_id")) else None
        address = _object(payload, "billing_address") or _object(payload, "shipping_address") or {}
        country = _text(address, "country_code")
        currency = _shop_currency(payload, "total_price") or _text(payload, "currency")
        order_id = _id(payload) or 0
        discount_codes = tuple(str(d.get("code")) for d in _list(payload, "discount_codes")
                               if isinstance(d, dict) and d.get("code"))
        shipping = payload.get("total_shipping_price_set")
        refunds = tuple(RefundRecord.from_payload(r, order_id=order_id, shop_currency=currency)
                        for r in _list(payload, "refunds"))
        email = normalise_email(_text(payload, "email") or _text(payload, "contact_email"))
        raw_phone = _text(payload, "phone") or _text(address, "phone")
        tags = payload.get("tags")
        tag_text = ", ".join(map(str, tags)) if isinstance(tags, list) else (str(tags) if tags else None)
        source_name = _text(payload, "source_name")
        rebill, subscription = subscription_signals(source_name, tag_text, _list(payload, "line_items"))
        updated_at = timestamp(payload.get("updated_at"), "updated_at")
        return cls(
            order_id=order_id,
            customer_id=customer.customer_id if customer else None,
            email=email or (customer.email if customer else None),
            phone=normalise_phone(raw_phone, country) or (customer.phone if customer else None),
            first_name=(customer.first_name if customer else None) or _text(address, "first_name"),
            last_name=(customer.last_name if customer else None) or _text(address, "last_name"),
            name=_text(payload, "name"),
            order_number=_quantity(payload["order_number"], "order_number") if payload.get("order_number") else None,
            currency=currency,
            presentment_currency=_text(payload, "presentment_currency") or _text(payload, "currency"),
            subtotal=shop_money(payload, "subtotal_price"),
            total=shop_money(payload, "total_price"),
            total_tax=shop_money(payload, "total_tax"),
            total_discounts=shop_money(payload, "total_discounts"),
            total_shipping=(money(shipping["shop_money"].get("amount"), "total_shipping_price_set")
                            if isinstance(shipping, dict) and isinstance(shipping.get("shop_money"), dict)
                            else Decimal("0")),
            financial_status=_text(payload, "financial_status"),
            fulfillment_status=_text(payload, "fulfillment_status"),
            test=bool(payload.get("test")),
            cart_token=_text(payload, "cart_token"),
            checkout_token=_text(payload, "checkout_token"),
            checkout_id=as_id(payload["checkout_id"], "checkout_id") if payload.get("checkout_id") else None,
            discount_codes=discount_codes,
            order_status_url=_text(payload, "order_status_url"),
            created_at=timestamp(payload.get("created_at"), "created_at"),
            cancelled_at=timestamp(payload.get("cancelled_at"), "cancelled_at"),
            updated_at=updated_at,
            lines=tuple(LineRecord.from_payload(line, i) for i, line in enumerate(_list(payload, "line_items"))
                        if isinstance(line, dict)),
            refunds=refunds,
            customer=customer,
            source_name=source_name,
            tags=tag_text or None,
            subscription=subscription,
            rebill=rebill,
            fulfilled_at=_fulfilled_at(payload, updated_at),
            country_code=country.upper() if country else None,
            city=_text(address, "city"),
            locale=_text(payload, "customer_locale"),
            points_basis=_points_basis(payload),
        )


def _points_basis(payload: Mapping[str, Any]) -> Decimal:
    """The subtotal after discounts without tax or shipping, in shop currency. Shopify's subtotal is already
    after discounts and before shipping; where prices include tax, the lines' taxes come off."""
    subtotal = shop_money(payload, "subtotal_price")
    if not payload.get("taxes_included"):
        return max(subtotal, Decimal("0"))
    taxes = sum((shop_money(tax, "price") for line in _list(payload, "line_items") if isinstance(line, dict)
                 for tax in _list(line, "tax_lines") if isinstance(tax, dict)), Decimal("0"))
    return max(subtotal - taxes, Decimal("0"))


# Tags that subscription apps put on the orders they create for a renewal (compared lower-cased).
REBILL_TAGS = frozenset({"subscription recurring order", "recurring order", "subscription renewal",
                         "recurring subscription order"})


def subscription_signals(source_name: str | None, tags: str | None, lines: list[Any]) -> tuple[bool, bool]:
    """(rebill, subscription): a renewal charge comes from Shopify's subscription contracts
    (`source_name` "subscription_contract...") or carries a renewal tag; any order is a subscription
    order when it is a rebill, has a tag mentioning subscriptions, or a line bought under a selling plan."""
    tag_set = {t.strip().lower() for t in (tags or "").split(",") if t.strip()}
    rebill = (source_name or "").lower().startswith("subscription_contract") or bool(tag_set & REBILL_TAGS)
    selling_plan = any(isinstance(li, dict) and (li.get("selling_plan_allocation") or li.get("selling_plan_id"))
                       for li in lines)
    return rebill, rebill or selling_plan or any("subscription" in t for t in tag_set)


def _fulfilled_at(payload: Mapping[str, Any], updated_at: datetime | None) -> datetime | None:
    """When the order was first fulfilled: its earliest successful fulfilment, else (when Shopify says
    the order is fulfilled without listing fulfilments) its last update."""
    moments = [timestamp(f.get("created_at"), "fulfillments.created_at") for f in _list(payload, "fulfillments")
               if isinstance(f, dict) and f.get("status") in (None, "success")]
    known = [m for m in moments if m is not None]
    if known:
        return min(known)
    return updated_at if payload.get("fulfillment_status") == "fulfilled" else None


class RefundRecord(NamedTuple):
    refund_id: int
    order_id: int
    amount: Decimal  # shop currency, what the buyer got back
    lines: tuple[tuple[int, int], ...]  # (line_item_id, quantity)
    created_at: datetime | None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], *, order_id: int | None = None,
                     shop_currency: str | None = None) -> RefundRecord:
        refund_id = _id(payload) or 0
        lines: list[tuple[int, int]] = []
        line_amount = Decimal("0")
        has_shop_money = False
        for i, rli in enumerate(_list(payload, "refund_line_items")):
            if not isinstance(rli, dict):
                raise PayloadError(f"refund_line_items[{i}] must be an object")
            line_id = rli.get("line_item_id")
            if line_id is not None:
                lines.append((as_id(line_id, "line_item_id"), _quantity(rli.get("quantity", 0), "quantity")))
            has_shop_money = has_shop_money or isinstance(rli.get("subtotal_set"), dict)
            line_amount += shop_money(rli, "subtotal") + shop_money(rli, "total_tax")
        for adj in _list(payload, "order_adjustments"):
            if isinstance(adj, dict):
                # Adjustments are negative when money goes back to the buyer (shipping refunds).
                line_amount -= shop_money(adj, "amount") + shop_money(adj, "tax_amount")
        transactions = [t for t in _list(payload, "transactions") if isinstance(t, dict)
                        and t.get("kind") == "refund" and t.get("status") in (None, "success")]
        tx_currencies = {t.get("currency") for t in transactions if t.get("currency")}
        # Transactions are the money actually moved, but in presentment currency: use them only when
        # that is the shop's currency; otherwise the shop-money line amounts are the truth.
        if transactions and (not has_shop_money or (shop_currency and tx_currencies <= {shop_currency})):
            amount = sum((money(t.get("amount"), "transactions.amount") for t in transactions), Decimal("0"))
        else:
            amount = line_amount
        oid = order_id if order_id is not None else _id(payload, "order_id", gid_key=None)
        return cls(refund_id=refund_id, order_id=oid or 0, amount=max(amount, Decimal("0")), lines=tuple(lines),
                   created_at=timestamp(payload.get("created_at") or payload.get("processed_at"), "created_at"))


class ProductRecord(NamedTuple):
    product_id: int
    title: str | None
    handle: str | None
    product_type: str | None
    vendor: str | None
    tags: str | None
    status: str | None
    image_url: str | None
    updated_at: datetime | None
    collections: tuple[str, ...] | None = None  # titles; only GraphQL reads (polls, backfill) carry them

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ProductRecord:
        image = _object(payload, "image")
        images = _list(payload, "images")
        image_url = (_text(image, "src") if image else None) or (
            _text(images[0], "src") if images and isinstance(images[0], dict) else None)
        tags = payload.get("tags")
        return cls(
            product_id=_id(payload) or 0,
            title=_text(payload, "title"),
            handle=_text(payload, "handle"),
            product_type=_text(payload, "product_type"),
            vendor=_text(payload, "vendor"),
            tags=", ".join(tags) if isinstance(tags, list) else (str(tags) if tags else None),
            status=_text(payload, "status"),
            image_url=image_url,
            updated_at=timestamp(payload.get("updated_at"), "updated_at"),
            collections=tuple(str(c) for c in payload["collections"]) if isinstance(payload.get("collections"), list)
            else None,
        )


def _cart_lines(payload: Mapping[str, Any]) -> tuple[tuple[dict[str, Any], ...], Decimal]:
    lines: list[dict[str, Any]] = []
    total = Decimal("0")
    for i, line in enumerate(_list(payload, "line_items")):
        if not isinstance(line, dict):
            raise PayloadError(f"line_items[{i}] must be an object")
        quantity = _quantity(line.get("quantity", 0), f"line_items[{i}].quantity")
        price = shop_money(line, "price")
        line_total = shop_money(line, "line_price") if line.get("line_price") is not None else price * quantity
        total += line_total
        lines.append({
            "product_id": as_id(line["product_id"], "product_id") if line.get("product_id") else None,
            "variant_id": as_id(line["variant_id"], "variant_id") if line.get("variant_id") else None,
            "title": _text(line, "title") or _text(line, "presentment_title"),
            "quantity": quantity,
            "price": str(price),
            "sku": _text(line, "sku"),
        })
    return tuple(lines), total


class CheckoutRecord(NamedTuple):
    checkout_id: int
    token: str | None
    cart_token: str | None
    customer_id: int | None
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    currency: str | None
    subtotal: Decimal
    total: Decimal
    recovery_url: str | None
    lines: tuple[dict[str, Any], ...]
    completed_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None

    @property
    def contact_key(self) -> str | None:
        try:
            return contact_key_for(customer_id=self.customer_id, email=self.email, phone=self.phone)
        except ValueError:
            return None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CheckoutRecord:
        customer = _object(payload, "customer")
        address = _object(payload, "billing_address") or _object(payload, "shipping_address") or {}
        country = _text(address, "country_code")
        lines, _ = _cart_lines(payload)
        customer_id = _id(customer, required=False) if customer else None
        raw_phone = _text(payload, "phone") or _text(payload, "sms_marketing_phone") or (
            _text(customer, "phone") if customer else None)
        return cls(
            checkout_id=_id(payload, gid_key=None) or 0,
            token=_text(payload, "token"),
            cart_token=_text(payload, "cart_token"),
            customer_id=customer_id,
            email=normalise_email(_text(payload, "email") or (_text(customer, "email") if customer else None)),
            phone=normalise_phone(raw_phone, country),
            first_name=(_text(customer, "first_name") if customer else None) or _text(address, "first_name"),
            last_name=(_text(customer, "last_name") if customer else None) or _text(address, "last_name"),
            currency=_text(payload, "currency"),
            subtotal=shop_money(payload, "subtotal_price"),
            total=shop_money(payload, "total_price"),
            recovery_url=_text(payload, "abandoned_checkout_url"),
            lines=lines,
            completed_at=timestamp(payload.get("completed_at"), "completed_at"),
            created_at=timestamp(payload.get("created_at"), "created_at"),
            updated_at=timestamp(payload.get("updated_at"), "updated_at"),
        )


class CartRecord(NamedTuple):
    token: str
    lines: tuple[dict[str, Any], ...]
    total: Decimal
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CartRecord:
        token = _text(payload, "token") or _text(payload, "id")
        if not token:
            raise PayloadError("missing 'token'")
        lines, total = _cart_lines(payload)
        return cls(token=token, lines=lines, total=total,
                   created_at=timestamp(payload.get("created_at"), "created_at"),
                   updated_at=timestamp(payload.get("updated_at"), "updated_at"))
