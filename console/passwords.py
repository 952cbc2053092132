"""Reviewer and reporter tokens, stored only as salted scrypt hashes (`scrypt$n$r$p$salt$hash`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_N, _R, _P = 2**14, 8, 1
_PREFIX = "scrypt"


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(token: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)


def hash_token(token: str) -> str:
    salt = secrets.token_bytes(16)
    return f"{_PREFIX}${_N}${_R}${_P}${_b64(salt)}${_b64(_derive(token, salt, _N, _R, _P))}"


def is_hash(text: str) -> bool:
    parts = text.split("$")
    return len(parts) == 6 and parts[0] == _PREFIX and all(p.isdigit() for p in parts[1:4])


def verify(token: str, hashed: str) -> bool:
    """Whether `token` is the one `hashed` was made from (in constant time for a given hash)."""
    if not is_hash(hashed):
        return False
    _, n, r, p, salt, digest = hashed.split("$")
    try:
        expected = _unb64(digest)
        derived = _derive(token, _unb64(salt), int(n), int(r), int(p))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(derived, expected)
