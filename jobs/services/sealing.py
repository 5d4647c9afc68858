"""Credentials on their way through the broker: sealed (Fernet: AES-CBC + HMAC) with a key derived
from SECRET_KEY, which every web process and worker shares. Whoever reads the Redis queue (or a
worker's task log) sees ciphertext; a sealed message older than SEAL_TTL_SECONDS is refused, so a
copied message cannot be replayed into a launch later."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

# Longer than the launch task's retries (8, capped backoff, about 4 min) plus a redelivery after a
# worker died (LAUNCHER_TASK_VISIBILITY_SECONDS).
SEAL_TTL_SECONDS = 3600


class SealBroken(Exception):
    """The sealed credentials cannot be opened: another SECRET_KEY, tampered with, or too old."""


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"flare-launcher/credentials/v1\0" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def credentials_seal(credentials: dict[str, Any]) -> str:
    return _fernet().encrypt(json.dumps(credentials).encode()).decode("ascii")


def credentials_unseal(sealed: str) -> dict[str, Any]:
    try:
        return json.loads(_fernet().decrypt(sealed.encode("ascii"), ttl=SEAL_TTL_SECONDS))
    except (InvalidToken, ValueError, UnicodeError) as exc:
        raise SealBroken("the job's credentials could not be unsealed (another SECRET_KEY, or older than "
                         f"{SEAL_TTL_SECONDS} s); submit the job again") from exc
