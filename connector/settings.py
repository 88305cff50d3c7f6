"""The one Settings object: every knob an operator sets, read from the environment and `.env`."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///connector.db"
DEFAULT_BREVO_API_URL = "https://api.brevo.com/v3"
DEFAULT_SHOPIFY_API_VERSION = "2026-01"

# Values that people paste from examples; treated as "not set".
_PLACEHOLDERS = {"", "changeme", "change-me", "xxx", "your-key", "your-secret", "todo", "placeholder", "secret"}


class MissingSetting(Exception):
    """A required setting is missing or still holds a placeholder value."""

    def __init__(self, name: str, why: str = "is not set") -> None:
        super().__init__(f"{name} {why}")
        self.name = name


def is_placeholder(value: str | None) -> bool:
    if value is None:
        return True
    v = value.strip().lower()
    return v in _PLACEHOLDERS or v.startswith("<") or v.startswith("your_") or v.startswith("your-")


class Settings(BaseSettings):
    """Operator contract (DESIGN 6). Secrets are optional here and demanded by the verb that needs them."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = Field(default=DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    shopify_api_key: str | None = Field(default=None, alias="SHOPIFY_API_KEY")
    shopify_api_secret: str | None = Field(default=None, alias="SHOPIFY_API_SECRET")
    shopify_api_secret_previous: str | None = Field(default=None, alias="SHOPIFY_API_SECRET_PREVIOUS")
    shopify_api_version: str = Field(default=DEFAULT_SHOPIFY_API_VERSION, alias="SHOPIFY_API_VERSION")
    shopify_admin_url: str | None = Field(default=None, alias="SHOPIFY_ADMIN_URL")
    shopify_shop: str | None = Field(default=None, alias="SHOPIFY_SHOP")
    shopify_access_token: str | None = Field(default=None, alias="SHOPIFY_ACCESS_TOKEN")
    brevo_api_key: str | None = Field(default=None, alias="BREVO_API_KEY")
    brevo_api_url: str = Field(default=DEFAULT_BREVO_API_URL, alias="BREVO_API_URL")
    connector_secret_key: str | None = Field(default=None, alias="CONNECTOR_SECRET_KEY")
    # During a key rotation: the key secrets were sealed with before (see `connector secrets rotate`).
    connector_secret_key_previous: str | None = Field(default=None, alias="CONNECTOR_SECRET_KEY_PREVIOUS")
    # The connector's public https address (what Shopify delivers webhooks to): `shops check` subscribes
    # custom-app shops to {this}/webhooks/shopify.
    public_url: str | None = Field(default=None, alias="CONNECTOR_PUBLIC_URL")
    host: str = Field(default="127.0.0.1", alias="CONNECTOR_HOST")
    port: int = Field(default=8080, alias="PORT")
    # Live events older than this (judged on X-Shopify-Triggered-At) are history, not triggers (DESIGN 3.5).
    event_freshness_hours: float = Field(default=24.0, alias="CONNECTOR_EVENT_FRESHNESS_HOURS")
    webhook_max_body_bytes: int = Field(default=2 * 1024 * 1024, alias="CONNECTOR_WEBHOOK_MAX_BODY_BYTES")
    lease_seconds: float = Field(default=30.0, alias="CONNECTOR_LEASE_SECONDS")
    # Each shop's reconciliation polls (what webhooks missed) run this often; 0 turns them off.
    reconcile_minutes: float = Field(default=5.0, ge=0, alias="CONNECTOR_RECONCILE_MINUTES")
    # A worker reads a backfill's next chunk of history in a helper process while it applies the current one.
    read_ahead: bool = Field(default=True, alias="CONNECTOR_READ_AHEAD")

    @field_validator("shopify_shop")
    @classmethod
    def _normalise_shop(cls, value: str | None) -> str | None:
        if value is None:
            return None
        v = value.strip().lower().removeprefix("https://").removeprefix("http://").rstrip("/")
        if v and "." not in v:
            v = f"{v}.myshopify.com"
        return v or None

    @field_validator("brevo_api_url", "shopify_admin_url", "public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def require(self, *names: str) -> None:
        """Raise MissingSetting naming the first environment variable that is missing or a placeholder."""
        for name in names:
            field = next(f for f, info in type(self).model_fields.items() if info.alias == name)
            value = getattr(self, field)
            if is_placeholder(value):
                raise MissingSetting(name, "is not set" if not value else "still holds a placeholder value")

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.shopify_api_secret, self.shopify_api_secret_previous) if s)

    @property
    def single_store_mode(self) -> bool:
        return bool(self.shopify_shop and self.shopify_access_token)
