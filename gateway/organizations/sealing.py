"""The key that seals organizations' outbound credentials (``GATEWAY_SECRETS_KEY``)."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from gateway.settings import Settings

KEY_FILE = "secrets.key"


class KeyMissing(ValueError):
    pass


def _decode(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise KeyMissing("GATEWAY_SECRETS_KEY is not base64url") from None
    if len(key) != 32:
        raise KeyMissing("GATEWAY_SECRETS_KEY must be 32 bytes (43 base64url characters)")
    return key


def sealing_key(settings: Settings) -> bytes:
    """The configured key, else the data folder's key file (made on first use, mode 0600)."""
    if settings.secrets_key is not None and settings.secrets_key.get_secret_value().strip():
        return _decode(settings.secrets_key.get_secret_value())
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(descriptor, "w") as out:
                out.write(text + "\n")
    return _decode(path.read_text())
