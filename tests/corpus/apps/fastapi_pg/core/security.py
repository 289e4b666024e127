"""Password hashing (argon2) and signed access tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from .config import settings

password_hasher = PasswordHasher()


def get_password_hash(password: str) -> str:
    return password_hasher.hash(password)


def verify_password(plain_password: str, hashed_password: str) -> bool:
    try:
        return password_hasher.verify(hashed_password, plain_password)
    except VerificationError:
        return False


def _sign(payload: bytes) -> str:
    digest = hmac.new(settings.SECRET_KEY.encode(), payload, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def create_access_token(subject: int, expires_minutes: int) -> str:
    claims = {"sub": subject, "exp": int(time.time()) + 60 * expires_minutes}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode())
    return f"{payload.decode()}.{_sign(payload)}"


def read_access_token(token: str) -> int | None:
    """The user id of a valid, unexpired token; None otherwise."""
    payload, _, signature = token.partition(".")
    if not hmac.compare_digest(_sign(payload.encode()), signature):
        return None
    claims = json.loads(base64.urlsafe_b64decode(payload))
    return int(claims["sub"]) if claims["exp"] > time.time() else None
