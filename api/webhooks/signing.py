"""Standard Webhooks signatures (https://www.standardwebhooks.com, "Signature scheme").

Signed content is ``f"{webhook_id}.{webhook_timestamp}.{body}"``; the signature is
``v1,`` + base64(HMAC-SHA256(secret bytes, signed content)), where the secret bytes are the
base64 part of ``whsec_<base64>``. The id stays the same across retries, the timestamp is the
attempt's (receivers reject stale ones), so each attempt is signed anew.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }
