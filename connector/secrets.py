"""Secrets at rest: shop access tokens and Brevo keys are stored encrypted with CONNECTOR_SECRET_KEY (Fernet).

A key is rotated in two steps: set the new key as CONNECTOR_SECRET_KEY and the old one as
CONNECTOR_SECRET_KEY_PREVIOUS (everything stored still opens), run `connector secrets rotate` (everything is
sealed again with the new key), then drop the previous key."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretBoxError(Exception):
    """A stored secret cannot be decrypted with the configured CONNECTOR_SECRET_KEY."""


def _fernet(key: str) -> Fernet:
    # Any passphrase works: it is stretched to the 32-byte key Fernet needs.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))


class SecretBox:
    def __init__(self, key: str, previous: str | None = None) -> None:
        self._fernet = MultiFernet([_fernet(key)] + ([_fernet(previous)] if previous else []))

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        return self._unseal(self._fernet.decrypt, sealed)

    def reseal(self, sealed: str) -> str:
        """The same secret sealed with the current key (opened with either)."""
        return self._unseal(self._fernet.rotate, sealed)

    @staticmethod
    def _unseal(step: Callable[[bytes], bytes], sealed: str) -> str:
        try:
            return step(sealed.encode()).decode()
        except InvalidToken:
            raise SecretBoxError("a stored secret does not decrypt with CONNECTOR_SECRET_KEY "
                                 "(or CONNECTOR_SECRET_KEY_PREVIOUS)") from None
