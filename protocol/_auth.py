"""Challenge-response authentication: the shared secret never crosses the wire (SPEC.md section 7)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ._constants import AUTH_CHALLENGE_SIZE, AUTH_CONTEXT


def new_challenge() -> bytes:
    """16 random bytes from the OS CSPRNG, fresh for every connection."""
    return secrets.token_bytes(AUTH_CHALLENGE_SIZE)


def auth_response(secret: bytes, challenge: bytes, client_name: str) -> bytes:
    """HMAC-SHA256(key=secret, msg="EIS-HIL-AUTH-V1" || challenge || client_name as UTF-8)."""
    return hmac.new(secret, AUTH_CONTEXT + challenge + client_name.encode("utf-8"), hashlib.sha256).digest()


def verify_response(secret: bytes, challenge: bytes, client_name: str, response: bytes) -> bool:
    """Constant-time check of a client's response."""
    return hmac.compare_digest(auth_response(secret, challenge, client_name), response)
