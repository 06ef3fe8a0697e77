"""Passwords (salted scrypt) and bearer tokens (random, stored only as their sha256)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, delete, select

from libs.db import Token, User, as_utc, utcnow

# scrypt cost: about 16 MiB and a few tens of milliseconds per hash.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_LEN = 32
_SALT_BYTES = 16


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=_SCRYPT_N,
        r=_SCRYPT_R,
        p=_SCRYPT_P,
        dklen=_SCRYPT_LEN,
    )


def hash_password(password: str) -> str:
    """``scrypt$<salt hex>$<hash hex>`` for storing in ``User.password_hash``."""
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"scrypt${salt.hex()}${_scrypt(password, salt).hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (False for a hash in an unknown form)."""
    scheme, _, rest = stored.partition("$")
    salt_hex, _, hash_hex = rest.partition("$")
    if scheme != "scrypt" or not salt_hex or not hash_hex:
        return False
    try:
        salt, expected = bytes.fromhex(salt_hex), bytes.fromhex(hash_hex)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt), expected)


#: Checked against when the user name is unknown, so a login takes as long either way and
#: the timing does not tell which user names exist.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The user with this name and password, or None (same cost whether the name exists)."""
    user = session.exec(select(User).where(col(User.name) == name)).first()
    if user is None:
        verify_password(password, _DUMMY_HASH)
        return None
    return user if verify_password(password, user.password_hash) else None


def token_digest(token: str) -> str:
    """The sha256 hex digest under which a token is stored (``Token.id``)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(session: Session, user: User, ttl_seconds: int) -> tuple[str, Token]:
    """A new bearer token for ``user``: the secret (shown once) and its stored row.

    The user's expired tokens are removed at the same time, so the table does not grow.
    """
    now = utcnow()
    session.exec(delete(Token).where(col(Token.user_id) == user.id, col(Token.expires_at) < now))
    secret = secrets.token_urlsafe(32)
    row = Token(
        id=token_digest(secret), user_id=user.id, expires_at=now + timedelta(seconds=ttl_seconds)
    )
    session.add(row)
    return secret, row


#: The dashboard's session cookie (HttpOnly): it holds the token the user signed in with.
SESSION_COOKIE = "tetsu_session"
#: Where a write authenticated by the session cookie carries its anti-forgery token.
CSRF_HEADER = "X-CSRF-Token"


def csrf_token(session_token: str) -> str:
    """The anti-forgery token of a dashboard session, derived from its secret token: the
    dashboard's forms carry it, and a page of another site can neither read the cookie nor
    compute it."""
    return hmac.new(session_token.encode("utf-8"), b"tetsu-csrf", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class TokenOwner:
    """Who a bearer token belongs to, as much as a request needs, and when it expires."""

    user_id: str
    project_id: str
    role: str
    expires_at: datetime


class TokenCache:
    """Who the tokens presented lately belong to, remembered for ``seconds``: every
    request presents a token, and looking it up was a round trip to the database and a
    tenth of the API's CPU per request. A token still stops working when it expires (its
    expiry is kept with it), and at once in the API process that deletes its user; the
    other API processes keep accepting it for up to ``seconds`` (keystonemiddleware,
    in front of Ironic and Nova, caches tokens for 300 s by default). 0 turns it off."""

    def __init__(self, seconds: float, *, size: int = 10_000) -> None:
        self.seconds = seconds
        self.size = size
        self._lock = threading.Lock()
        self._owners: dict[str, tuple[float, TokenOwner]] = {}

    def get(self, digest: str) -> TokenOwner | None:
        """The owner of the token with this digest if it was seen within ``seconds`` and
        has not expired since."""
        found = self._owners.get(digest)
        if found is None:
            return None
        seen_at, owner = found
        if time.monotonic() - seen_at >= self.seconds or owner.expires_at <= utcnow():
            with self._lock:
                self._owners.pop(digest, None)
            return None
        return owner

    def put(self, digest: str, owner: TokenOwner) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._owners) >= self.size:
                self._owners.clear()  # many callers: start over rather than track ages
            self._owners[digest] = (time.monotonic(), owner)

    def forget_user(self, user_id: str) -> None:
        """Forget the tokens of ``user_id`` (deleted: they stop working in this process)."""
        with self._lock:
            for digest in [d for d, (_, o) in self._owners.items() if o.user_id == user_id]:
                del self._owners[digest]


def owner_of_token(session: Session, token: str, cache: TokenCache) -> TokenOwner | None:
    """Who ``token`` belongs to (from ``cache`` when it knows), or None when it is unknown
    or expired."""
    digest = token_digest(token)
    owner = cache.get(digest)
    if owner is None:
        # One query for the user and the expiry (each request the cache does not know).
        found = session.exec(
            select(User, Token.expires_at)
            .join(Token, col(Token.user_id) == col(User.id))
            .where(col(Token.id) == digest)
        ).first()
        if found is None:
            return None
        user, expires_at = found
        owner = TokenOwner(
            user_id=user.id,
            project_id=user.project_id,
            role=user.role,
            expires_at=as_utc(expires_at),
        )
        cache.put(digest, owner)
    return owner if owner.expires_at > utcnow() else None
