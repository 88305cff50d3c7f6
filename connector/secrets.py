"""Secrets at rest: shop access tokens and Brevo keys are stored encrypted with CONNECTOR_SECRET_KEY (Fernet)."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken


class SecretBoxError(Exception):
    """A stored secret cannot be decrypted with the configured CONNECTOR_SECRET_KEY."""


class SecretBox:
    def __init__(self, key: str) -> None:
        # Any passphrase works: it is stretched to the 32-byte key Fernet needs.
        digest = hashlib.sha256(key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise SecretBoxError("a stored secret does not decrypt with CONNECTOR_SECRET_KEY") from None
