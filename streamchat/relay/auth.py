"""Who is calling: bearer keys from the environment or a file, compared in constant time.

A key has an *id*, which is what logs and usage lines show, and a *secret*,
which never leaves this module except to be compared. Browsers cannot put an
``Authorization`` header on an ``EventSource`` or a ``WebSocket``, so a key
can also be exchanged for a short-lived signed *token* (``POST /v1/tokens``)
that goes in the URL: stateless (an HMAC with the key's own secret, so every
worker holding the same keys accepts it) and useless once expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

KEYS_ENV = "STREAMCHAT_RELAY_KEYS"
MIN_SECRET_LENGTH = 16
ANONYMOUS = "anonymous"
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SECRET = re.compile(r"^[\x21-\x7e]+$")
_GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One caller's key. ``repr`` and ``str`` show the id only."""

    id: str
    secret: str = field(repr=False)

    def __str__(self) -> str:
        return self.id


def key_id_for(secret: str) -> str:
    """The id of a key given without one: stable, and useless for guessing the key."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def parse_keys(text: str, *, where: str) -> tuple[ClientKey, ...]:
    """Keys from text: ``id:secret`` or a bare ``secret`` per line or comma; ``#`` starts a comment."""
    keys: list[ClientKey] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        for item in line.replace(",", " ").split():
            keys.append(_one_key(item, f"{where}, line {n}" if "\n" in text.strip() else where))
    ids = [k.id for k in keys]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{where}: key id {dupes[0]!r} is used twice; every key needs its own id")
    return tuple(keys)


def _one_key(item: str, where: str) -> ClientKey:
    kid, sep, secret = item.partition(":")
    if not sep:
        kid, secret = "", item
    if sep and not _ID.match(kid):
        raise ConfigError(f"{where}: a key id may use letters, digits, '.', '_' and '-' (1–64 characters)")
    if len(secret) < MIN_SECRET_LENGTH or not _SECRET.match(secret):
        # The message must not echo the secret, not even a short one.
        name = f"key {kid!r}" if kid else "a key"
        raise ConfigError(
            f"{where}: {name} is shorter than {MIN_SECRET_LENGTH} characters or holds spaces or control "
            f"characters; generate one with: {_GENERATE}"
        )
    return ClientKey(kid or key_id_for(secret), secret)


def load_keys(*, environ: Mapping[str, str] | None = None, file: str | os.PathLike[str] | None = None) -> tuple[ClientKey, ...]:
    """Keys from ``$STREAMCHAT_RELAY_KEYS`` and from ``file`` (both, when both are given)."""
    env = os.environ if environ is None else environ
    keys: list[ClientKey] = []
    if env.get(KEYS_ENV, "").strip():
        keys += parse_keys(env[KEYS_ENV], where=f"${KEYS_ENV}")
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the keys file {path}: {exc.strerror or exc}") from None
        keys += parse_keys(text, where=str(path))
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"the same key id appears in ${KEYS_ENV} and in {file}; every key needs its own id")
    return tuple(keys)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """Checks bearer keys and tokens; never reveals which part of a wrong key was right."""

    def __init__(
        self,
        keys: Iterable[ClientKey],
        *,
        allow_anonymous: bool = False,
        token_ttl_s: float = 300.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._keys = tuple(keys)
        self._digests = tuple((_digest(k.secret), k) for k in self._keys)
        self._by_id = {k.id: k for k in self._keys}
        self.anonymous = allow_anonymous and not self._keys
        self.token_ttl_s = token_ttl_s
        self._wall = wall

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(k.id for k in self._keys)

    @property
    def required(self) -> bool:
        """Whether callers must present a key (False only in anonymous mode)."""
        return not self.anonymous

    def secrets(self) -> tuple[str, ...]:
        """Every secret, for redaction only."""
        return tuple(k.secret for k in self._keys)

    def check_key(self, presented: str) -> ClientKey | None:
        """The key matching ``presented``; every stored key is compared, so timing says nothing."""
        digest = _digest(presented)
        found: ClientKey | None = None
        for stored, key in self._digests:
            if hmac.compare_digest(digest, stored):
                found = key
        return found

    def authenticate(self, authorization: str | None, token: str | None = None) -> ClientKey:
        """The caller's key, from ``Authorization: Bearer …`` or a ``token``; raises :class:`AuthFailure`."""
        if self.anonymous:
            return ClientKey(ANONYMOUS, "")
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            value = value.strip()
            if scheme.lower() != "bearer" or not value:
                raise AuthFailure("invalid_api_key", "the Authorization header must be 'Bearer <key>'")
            if value.startswith("sct."):
                return self.verify_token(value)
            key = self.check_key(value)
            if key is None:
                raise AuthFailure("invalid_api_key", "the API key is not valid for this relay")
            return key
        if token:
            return self.verify_token(token)
        raise AuthFailure(
            "missing_api_key", "no API key: send 'Authorization: Bearer <key>' (or a token from POST /v1/tokens)"
        )

    def issue_token(self, key: ClientKey) -> tuple[str, int]:
        """A token for ``key`` valid for ``token_ttl_s``; returns it and its expiry (Unix seconds)."""
        expires = int(self._wall() + self.token_ttl_s)
        payload = f"{key.id}.{expires}"
        return f"sct.{payload}.{self._sign(key, payload)}", expires

    def verify_token(self, token: str) -> ClientKey:
        """The key a token was issued for; raises :class:`AuthFailure` if forged or expired."""
        parts = token.split(".")
        key = self._by_id.get(parts[1]) if len(parts) == 4 and parts[0] == "sct" and parts[2].isdigit() else None
        if key is None:
            raise AuthFailure("invalid_token", "the token is not valid for this relay: get a new one from POST /v1/tokens")
        expected = self._sign(key, f"{parts[1]}.{parts[2]}")
        if not hmac.compare_digest(expected.encode(), parts[3].encode("utf-8", "surrogateescape")):
            raise AuthFailure("invalid_token", "the token is not valid for this relay: get a new one from POST /v1/tokens")
        if self._wall() >= int(parts[2]):
            raise AuthFailure("expired_token", "the token has expired: get a new one from POST /v1/tokens")
        return key

    @staticmethod
    def _sign(key: ClientKey, payload: str) -> str:
        mac = hmac.new(key.secret.encode(), b"streamchat-relay-token:" + payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")


class AuthFailure(Exception):
    """Why a caller was not let in; ``code`` is machine-readable, ``message`` never holds a secret."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
