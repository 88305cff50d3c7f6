"""A shop's configuration: defaults with none, every validation rule by its key, and what it does to attributes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappings.shop_config import (
    ATTRIBUTE_NAMES,
    EVENT_NAMES,
    REQUIRED_ATTRIBUTES,
    SEGMENT_NAMES,
    ConfigError,
    LifecycleSettings,
    ShopConfig,
)


def _refused(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        ShopConfig.from_dict(data)
    error = caught.value
    assert str(error).startswith(f"{error.key}: ")
    return error


# Defaults


@pytest.mark.parametrize("data", [None, {}, {"attributes": {}, "events": {}, "lifecycle": {}, "segments": {}}])
def test_no_configuration_is_the_default(data: dict[str, Any] | None) -> None:
    assert ShopConfig.from_dict(data) == ShopConfig.default()
    assert ShopConfig.from_toml("") == ShopConfig.default()


def test_by_default_every_attribute_keeps_its_name_and_every_event_is_sent() -> None:
    config = ShopConfig.default()
    assert all(config.brevo_name(name) == name for name in ATTRIBUTE_NAMES)
    assert all(config.event_enabled(name) for name in EVENT_NAMES)
    assert config.lifecycle == LifecycleSettings(abandoned_cart_minutes=60, winback_days=60, review_request_days=7,
                                                 rfm_recompute_hours=24, count_test_orders=False)
    assert dict(config.segment_lists) == {}
    assert config.to_dict() == {}


def test_the_default_is_hashable_and_cannot_be_changed() -> None:
    config = ShopConfig.default()
    assert hash(config) == hash(ShopConfig.from_dict({}))
    with pytest.raises(TypeError):
        config.renamed["TOTAL_SPENT"] = "X"  # type: ignore[index]


# The documented TOML shape


EXAMPLE = """
[attributes]
TOTAL_SPENT = "lifetime_value"
CUSTOMER_TAGS = false
CITY = true

[events]
cart_updated = false
order_completed = true

[lifecycle]
abandoned_cart_minutes = 90
winback_days = 120
review_request_days = 10
rfm_recompute_hours = 12
count_test_orders = true

[segments]
"Champions" = 12
"At Risk" = 15
"""


def test_the_documented_toml_is_read_into_its_settings() -> None:
    config = ShopConfig.from_toml(EXAMPLE)
    assert dict(config.renamed) == {"TOTAL_SPENT": "LIFETIME_VALUE"}
    assert config.disabled_attributes == {"CUSTOMER_TAGS"}
    assert config.disabled_events == {"cart_updated"}
    assert config.lifecycle == LifecycleSettings(abandoned_cart_minutes=90, winback_days=120, review_request_days=10,
                                                 rfm_recompute_hours=12, count_test_orders=True)
    assert dict(config.segment_lists) == {"Champions": 12, "At Risk": 15}


def test_a_configuration_read_from_toml_and_from_its_stored_dict_is_the_same() -> None:
    config = ShopConfig.from_toml(EXAMPLE)
    stored = json.loads(json.dumps(config.to_dict()))
    assert ShopConfig.from_dict(stored) == config


def test_a_toml_syntax_error_is_refused_with_its_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        ShopConfig.from_toml('[lifecycle]\nwinback_days = = 30\n')
    assert caught.value.key == "(file)"
    assert str(caught.value).startswith("(file): invalid TOML")
    assert "line 2" in str(caught.value)


# Attributes


def test_a_renamed_attribute_is_sent_under_its_new_name() -> None:
    config = ShopConfig.from_dict({"attributes": {"TOTAL_SPENT": "LIFETIME_VALUE"}})
    assert config.brevo_name("TOTAL_SPENT") == "LIFETIME_VALUE"
    assert config.apply({"TOTAL_SPENT": 10, "ORDER_COUNT": 2}) == {"LIFETIME_VALUE": 10, "ORDER_COUNT": 2}


def test_a_new_name_is_stored_uppercased() -> None:
    config = ShopConfig.from_dict({"attributes": {"TOTAL_SPENT": "lifetime_Value"}})
    assert config.brevo_name("TOTAL_SPENT") == "LIFETIME_VALUE"


def test_a_disabled_attribute_is_not_sent() -> None:
    config = ShopConfig.from_dict({"attributes": {"CUSTOMER_TAGS": False}})
    assert config.brevo_name("CUSTOMER_TAGS") is None
    assert config.apply({"CUSTOMER_TAGS": "vip", "CITY": "Lyon"}) == {"CITY": "Lyon"}


def test_true_or_its_own_name_keeps_an_attribute_as_it_is() -> None:
    config = ShopConfig.from_dict({"attributes": {"CITY": True, "COUNTRY": "country", "FIRSTNAME": "FIRSTNAME"}})
    assert config == ShopConfig.default()


def test_apply_passes_unknown_keys_through_unchanged() -> None:
    config = ShopConfig.from_dict({"attributes": {"TOTAL_SPENT": "LIFETIME_VALUE", "CITY": False}})
    assert config.apply({"LOYALTY_POINTS": 40, "CITY": "Lyon"}) == {"LOYALTY_POINTS": 40}


def test_an_unknown_key_never_overwrites_a_renamed_attribute() -> None:
    config = ShopConfig.from_dict({"attributes": {"TOTAL_SPENT": "LIFETIME_VALUE"}})
    assert config.apply({"LIFETIME_VALUE": "stale", "TOTAL_SPENT": 10}) == {"LIFETIME_VALUE": 10}


def test_an_unknown_attribute_is_refused_with_its_name_and_a_suggestion() -> None:
    error = _refused({"attributes": {"TOTAL_SPEND": "X"}})
    assert error.key == "attributes.TOTAL_SPEND"
    assert "'TOTAL_SPENT'" in str(error)


def test_an_attribute_in_the_wrong_case_is_refused_with_the_right_spelling() -> None:
    error = _refused({"attributes": {"total_spent": False}})
    assert error.key == "attributes.total_spent"
    assert "did you mean 'TOTAL_SPENT'?" in str(error)


@pytest.mark.parametrize("name", ["", "1VALUE", "LIFETIME VALUE", "LIFETIME-VALUE", "VALEUR_É", "A" * 51])
def test_a_new_name_that_brevo_would_refuse_is_refused(name: str) -> None:
    error = _refused({"attributes": {"TOTAL_SPENT": name}})
    assert error.key == "attributes.TOTAL_SPENT"
    assert "not a valid Brevo attribute name" in str(error)


def test_a_fifty_character_name_is_accepted() -> None:
    config = ShopConfig.from_dict({"attributes": {"TOTAL_SPENT": "A" * 50}})
    assert config.brevo_name("TOTAL_SPENT") == "A" * 50


@pytest.mark.parametrize("value", [1, 2.5, ["X"], {"name": "X"}])
def test_an_attribute_value_other_than_a_name_or_a_boolean_is_refused(value: Any) -> None:
    assert _refused({"attributes": {"CITY": value}}).key == "attributes.CITY"


@pytest.mark.parametrize("name", sorted(REQUIRED_ATTRIBUTES))
@pytest.mark.parametrize("value", [False, "OTHER_NAME"])
def test_brevo_own_attributes_cannot_be_renamed_or_disabled(name: str, value: Any) -> None:
    error = _refused({"attributes": {name: value}})
    assert error.key == f"attributes.{name}"
    assert "Brevo's own attribute" in str(error)


def test_two_attributes_renamed_to_the_same_name_are_refused() -> None:
    error = _refused({"attributes": {"TOTAL_SPENT": "VALUE", "CART_VALUE": "value"}})
    assert error.key == "attributes.CART_VALUE"
    assert "TOTAL_SPENT" in str(error)


def test_a_rename_onto_another_enabled_attribute_is_refused() -> None:
    error = _refused({"attributes": {"TOTAL_SPENT": "ORDER_COUNT"}})
    assert error.key == "attributes.TOTAL_SPENT"
    assert "ORDER_COUNT" in str(error)


def test_a_rename_onto_an_attribute_that_was_itself_renamed_away_is_refused() -> None:
    error = _refused({"attributes": {"TOTAL_SPENT": "ORDER_COUNT", "ORDER_COUNT": "ORDERS"}})
    assert error.key == "attributes.TOTAL_SPENT"


def test_a_rename_onto_a_disabled_attribute_is_accepted() -> None:
    config = ShopConfig.from_dict({"attributes": {"LAST_PRODUCT_URL": "CART_URL", "CART_URL": False}})
    assert config.apply({"LAST_PRODUCT_URL": "https://x.example/p", "CART_URL": "https://x.example/c"}) == {
        "CART_URL": "https://x.example/p"}


def test_a_rename_onto_a_brevo_own_attribute_is_refused() -> None:
    assert _refused({"attributes": {"CITY": "sms"}}).key == "attributes.CITY"


def test_a_rename_onto_the_contact_email_is_refused() -> None:
    error = _refused({"attributes": {"CITY": "EMAIL"}})
    assert error.key == "attributes.CITY"
    assert "identifier" in str(error)


def test_attribute_types_name_the_enabled_attributes_as_brevo_knows_them() -> None:
    config = ShopConfig.from_dict({"attributes": {"TOTAL_SPENT": "LIFETIME_VALUE", "CART_URL": False}})
    canonical_types = {"TOTAL_SPENT": "float", "CART_URL": "text", "CART_VALUE": "float", "LAST_ORDER_DATE": "date"}
    assert config.attribute_types(canonical_types) == {"LIFETIME_VALUE": "float", "CART_VALUE": "float",
                                                       "LAST_ORDER_DATE": "date"}


# Events


def test_a_disabled_event_is_not_enabled_and_the_others_are() -> None:
    config = ShopConfig.from_dict({"events": {"cart_updated": False, "birthday": True}})
    assert not config.event_enabled("cart_updated")
    assert config.event_enabled("birthday")
    assert config.event_enabled("order_completed")
    assert config.disabled_events == {"cart_updated"}


def test_an_unknown_event_is_refused_with_its_name_and_a_suggestion() -> None:
    error = _refused({"events": {"cart_update": False}})
    assert error.key == "events.cart_update"
    assert "did you mean 'cart_updated'?" in str(error)


@pytest.mark.parametrize("value", [0, "false", "no", None])
def test_an_event_switch_must_be_a_boolean(value: Any) -> None:
    error = _refused({"events": {"birthday": value}})
    assert error.key == "events.birthday"
    assert "true or false" in str(error)


# Lifecycle


@pytest.mark.parametrize(("name", "low", "high"), [
    ("abandoned_cart_minutes", 5, 10080),
    ("winback_days", 14, 730),
    ("review_request_days", 1, 90),
    ("rfm_recompute_hours", 1, 168),
])
def test_a_lifecycle_setting_is_accepted_at_its_bounds_and_refused_beyond(name: str, low: int, high: int) -> None:
    assert getattr(ShopConfig.from_dict({"lifecycle": {name: low}}).lifecycle, name) == low
    assert getattr(ShopConfig.from_dict({"lifecycle": {name: high}}).lifecycle, name) == high
    for outside in (low - 1, high + 1):
        error = _refused({"lifecycle": {name: outside}})
        assert error.key == f"lifecycle.{name}"
        assert f"from {low} to {high}" in str(error)


@pytest.mark.parametrize("value", [True, False, 30.0, "30", None])
def test_a_lifecycle_number_must_be_an_integer_and_not_a_boolean(value: Any) -> None:
    error = _refused({"lifecycle": {"winback_days": value}})
    assert error.key == "lifecycle.winback_days"
    assert "integer" in str(error)


@pytest.mark.parametrize("value", [1, 0, "true"])
def test_counting_test_orders_must_be_a_boolean(value: Any) -> None:
    error = _refused({"lifecycle": {"count_test_orders": value}})
    assert error.key == "lifecycle.count_test_orders"


def test_an_unknown_lifecycle_setting_is_refused_with_a_suggestion() -> None:
    error = _refused({"lifecycle": {"winback_day": 30}})
    assert error.key == "lifecycle.winback_day"
    assert "did you mean 'winback_days'?" in str(error)


# Segments


def test_a_segment_is_mapped_to_its_brevo_list() -> None:
    config = ShopConfig.from_dict({"segments": {"Champions": 12, "Can't Lose": 3}})
    assert dict(config.segment_lists) == {"Champions": 12, "Can't Lose": 3}


def test_an_unknown_segment_is_refused_with_its_quoted_key_and_a_suggestion() -> None:
    error = _refused({"segments": {"At risk": 15}})
    assert error.key == 'segments."At risk"'
    assert "did you mean 'At Risk'?" in str(error)


@pytest.mark.parametrize("value", [0, -3, True, "12", 12.0])
def test_a_segment_list_must_be_a_positive_integer(value: Any) -> None:
    error = _refused({"segments": {"Champions": value}})
    assert error.key == "segments.Champions"
    assert "list id" in str(error)


def test_two_segments_on_the_same_list_are_refused() -> None:
    error = _refused({"segments": {"Champions": 12, "At Risk": 12}})
    assert error.key == 'segments."At Risk"'
    assert "Champions" in str(error)


# Sections


def test_an_unknown_section_is_refused_with_a_suggestion() -> None:
    error = _refused({"atributes": {}})
    assert error.key == "atributes"
    assert str(error) == ("atributes: unknown section 'atributes'; expected one of attributes, events, lifecycle, "
                          "segments, privacy, consent; did you mean 'attributes'?")


def test_an_unknown_section_far_from_any_is_refused_without_a_suggestion() -> None:
    error = _refused({"loyalty": {}})
    assert error.key == "loyalty"
    assert "did you mean" not in str(error)


@pytest.mark.parametrize("section", ["attributes", "events", "lifecycle", "segments"])
def test_a_section_that_is_not_a_table_is_refused(section: str) -> None:
    error = _refused({section: 3})
    assert error.key == section
    assert "must be a table" in str(error)


def test_a_section_given_as_a_toml_value_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        ShopConfig.from_toml('events = ["cart_updated"]\n')
    assert caught.value.key == "events"


# Round trip


_new_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,49}", fullmatch=True).filter(
    lambda name: name.upper() not in ATTRIBUTE_NAMES and name.upper() != "EMAIL")
_optional = sorted(set(ATTRIBUTE_NAMES) - REQUIRED_ATTRIBUTES)
_lifecycle_values: dict[str, st.SearchStrategy[Any]] = {
    "abandoned_cart_minutes": st.integers(5, 10080),
    "winback_days": st.integers(14, 730),
    "review_request_days": st.integers(1, 90),
    "rfm_recompute_hours": st.integers(1, 168),
    "count_test_orders": st.booleans(),
}


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    chosen = draw(st.lists(st.sampled_from(_optional), unique=True))
    names = draw(st.lists(_new_names, min_size=len(chosen), max_size=len(chosen),
                          unique_by=lambda name: name.upper()))
    data["attributes"] = {
        canonical: draw(st.sampled_from([False, True, new_name]))
        for canonical, new_name in zip(chosen, names, strict=True)
    }
    data["events"] = draw(st.dictionaries(st.sampled_from(EVENT_NAMES), st.booleans()))
    settings = draw(st.lists(st.sampled_from(sorted(_lifecycle_values)), unique=True))
    data["lifecycle"] = {name: draw(_lifecycle_values[name]) for name in settings}
    segments = draw(st.lists(st.sampled_from(SEGMENT_NAMES), unique=True))
    lists = draw(st.lists(st.integers(1, 2**31), min_size=len(segments), max_size=len(segments), unique=True))
    data["segments"] = dict(zip(segments, lists, strict=True))
    return {section: values for section, values in data.items() if draw(st.booleans())}


@given(valid_configs())
def test_a_stored_configuration_reads_back_as_the_same_configuration(data: dict[str, Any]) -> None:
    config = ShopConfig.from_dict(data)
    stored = config.to_dict()
    assert json.loads(json.dumps(stored)) == stored
    assert ShopConfig.from_dict(stored) == config
    assert hash(ShopConfig.from_dict(stored)) == hash(config)
    assert ShopConfig.from_dict(stored).to_dict() == stored


@given(valid_configs())
def test_apply_sends_each_enabled_attribute_once_under_its_brevo_name(data: dict[str, Any]) -> None:
    config = ShopConfig.from_dict(data)
    sent = config.apply({name: name for name in ATTRIBUTE_NAMES})
    assert sorted(sent.values()) == sorted(name for name in ATTRIBUTE_NAMES
                                           if name not in config.disabled_attributes)
    assert all(sent[config.brevo_name(value) or ""] == value for value in sent.values())


def test_an_erased_buyer_is_deleted_from_brevo_unless_the_shop_chose_anonymising() -> None:
    assert ShopConfig.default().redact_in_brevo == "delete"
    chosen = ShopConfig.from_toml('[privacy]\nredact_in_brevo = "anonymise"\n')
    assert chosen.redact_in_brevo == "anonymise"
    assert ShopConfig.from_dict(chosen.to_dict()) == chosen
    assert ShopConfig.default().to_dict() == {}
    with pytest.raises(ConfigError, match=r"privacy.redact_in_brevo: must be one of 'delete', 'anonymise'"):
        ShopConfig.from_toml('[privacy]\nredact_in_brevo = "forget"\n')
    with pytest.raises(ConfigError, match="unknown setting 'keep'"):
        ShopConfig.from_toml('[privacy]\nkeep = true\n')


def test_brevo_opt_outs_go_to_shopify_unless_a_channel_keeps_consent_in_shopify_alone() -> None:
    assert ShopConfig.default().consent_to_shopify() == {"email", "sms"}
    chosen = ShopConfig.from_toml('[consent]\nemail = "shopify"\n')
    assert chosen.consent_to_shopify() == {"sms"}
    assert chosen.to_dict() == {"consent": {"email": "shopify"}}
    assert ShopConfig.from_dict(chosen.to_dict()) == chosen
    with pytest.raises(ConfigError, match=r"consent.email: must be one of 'both', 'shopify', not 'brevo'"):
        ShopConfig.from_toml('[consent]\nemail = "brevo"\n')
    with pytest.raises(ConfigError, match="unknown channel 'whatsapp'"):
        ShopConfig.from_toml('[consent]\nwhatsapp = "both"\n')
