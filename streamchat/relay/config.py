"""The relay's settings: one frozen :class:`RelayConfig`, from a TOML file, the environment and flags.

Every setting has one name, used in all three places: ``rpm`` is ``rpm = 60``
in the file, ``STREAMCHAT_RELAY_RPM=60`` in the environment and ``--rpm 60``
on the command line; later sources win (file, then environment, then flags).
Limits take ``off`` (or 0) to switch them off.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import RetryPolicy, Timeouts
from .auth import ClientKey, load_keys
from .limits import Limits

ENV_PREFIX = "STREAMCHAT_RELAY_"


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything the relay needs besides its provider. ``repr`` never shows a key."""

    keys: tuple[ClientKey, ...] = ()
    allow_anonymous: bool = False
    """Serve without keys. Only ever set on purpose (``--no-auth``), or by the CLI on loopback."""
    limits: Limits = field(default_factory=Limits)
    models: tuple[str, ...] = ()
    """Model names callers may ask for; empty means only the provider's own model."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call from a browser on another site; empty (the default) allows none."""
    timeouts: Timeouts = field(default_factory=lambda: Timeouts(connect=10.0, first_token=60.0, idle=30.0, total=300.0))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    heartbeat_s: float = 15.0
    """A comment on idle event streams this often; also how long a chat completion may hold its headers."""
    sse_retry_ms: int = 3000
    send_timeout_s: float = 30.0
    """A client that reads nothing for this long is treated as gone."""
    grace_s: float = 10.0
    """On shutdown, how long running streams may go on."""
    token_ttl_s: float = 300.0
    usage_log: str | None = "-"
    """Where usage lines go: a file path, ``-`` for standard error, None for nowhere."""
    log_prompts: bool = False

    def __post_init__(self) -> None:
        for name in ("heartbeat_s", "send_timeout_s", "token_ttl_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be more than 0, not {getattr(self, name)!r}")
        if self.grace_s < 0 or self.sse_retry_ms < 0:
            raise ConfigError("grace_s and sse_retry_ms must be 0 or more")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"CORS origin {origin!r} must look like https://example.org (scheme and host, no path)")


def _int_or_off(text: str) -> int | None:
    if text.strip().lower() in ("off", "none", "0"):
        return None
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def _seconds_or_off(text: str) -> float | None:
    if text.strip().lower() in ("off", "none", "0"):
        return None
    return _positive_float(text)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError
    return value


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


def _names(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.replace(",", " ").split() if x)


_SETTINGS: dict[str, tuple[Callable[[str], Any], str]] = {
    # name: (parser, what it expects: for messages)
    "rpm": (_int_or_off, "a positive integer or 'off'"),
    "tpm": (_int_or_off, "a positive integer or 'off'"),
    "streams_per_key": (_int_or_off, "a positive integer or 'off'"),
    "max_streams": (_int_or_off, "a positive integer or 'off'"),
    "max_body_bytes": (_positive_int, "a positive integer"),
    "max_messages": (_positive_int, "a positive integer"),
    "max_tokens": (_positive_int, "a positive integer"),
    "models": (_names, "model names separated by commas"),
    "cors_origins": (_names, "origins separated by commas"),
    "keys_file": (str, "a path"),
    "no_auth": (_bool, "true or false"),
    "first_token_timeout": (_seconds_or_off, "seconds or 'off'"),
    "idle_timeout": (_seconds_or_off, "seconds or 'off'"),
    "total_timeout": (_seconds_or_off, "seconds or 'off'"),
    "retries": (_count, "an integer, 0 or more"),
    "heartbeat": (_positive_float, "seconds, more than 0"),
    "send_timeout": (_positive_float, "seconds, more than 0"),
    "grace": (_non_negative_float, "seconds, 0 or more"),
    "token_ttl": (_positive_float, "seconds, more than 0"),
    "usage_log": (str, "a path, '-' for standard error, or 'off'"),
    "log_prompts": (_bool, "true or false"),
}
SETTING_NAMES = tuple(_SETTINGS)


def parse_setting(name: str, raw: object, where: str) -> Any:
    """One setting's value from text (or a TOML value), with a message naming its source."""
    parser, expects = _SETTINGS[name]
    if isinstance(raw, list | tuple) and parser is _names:
        raw = ",".join(str(x) for x in raw)
    text = str(raw).lower() if isinstance(raw, bool) else str(raw)
    try:
        return parser(text)
    except ValueError:
        raise ConfigError(f"{where}: {name} must be {expects}, not {text[:40]!r}") from None


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``STREAMCHAT_RELAY_<NAME>`` variables; ``STREAMCHAT_RELAY_KEYS`` is read by the key loader."""
    env = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name in _SETTINGS:
        var = ENV_PREFIX + name.upper()
        if env.get(var, "").strip():
            out[name] = parse_setting(name, env[var], f"${var}")
    return out


def settings_from_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings from a TOML file; an unknown name is an error, not a silent typo."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    data = data.get("relay", data)
    out: dict[str, Any] = {}
    for name, value in data.items():
        key = name.replace("-", "_")
        if key == "keys":
            raise ConfigError(f"{file}: keys do not belong in the config file; use keys_file or ${ENV_PREFIX}KEYS")
        if key not in _SETTINGS:
            raise ConfigError(f"{file}: unknown setting {name!r}; known: {', '.join(_SETTINGS)}")
        out[key] = parse_setting(key, value, str(file))
    return out


def build_config(settings: Mapping[str, Any], *, environ: Mapping[str, str] | None = None) -> RelayConfig:
    """A :class:`RelayConfig` from parsed settings, loading the keys they point to."""
    s = dict(settings)
    keys = load_keys(environ=environ, file=s.get("keys_file"))
    default = Limits()
    limits = Limits(
        requests_per_minute=s.get("rpm", default.requests_per_minute),
        tokens_per_minute=s.get("tpm", default.tokens_per_minute),
        streams_per_key=s.get("streams_per_key", default.streams_per_key),
        streams_total=s.get("max_streams", default.streams_total),
        max_body_bytes=s.get("max_body_bytes", default.max_body_bytes),
        max_messages=s.get("max_messages", default.max_messages),
        max_tokens=s.get("max_tokens", default.max_tokens),
    )
    base = RelayConfig()
    timeouts = Timeouts(
        connect=base.timeouts.connect,
        first_token=s.get("first_token_timeout", base.timeouts.first_token),
        idle=s.get("idle_timeout", base.timeouts.idle),
        total=s.get("total_timeout", base.timeouts.total),
    )
    usage_log = s.get("usage_log", base.usage_log)
    return RelayConfig(
        keys=keys,
        allow_anonymous=bool(s.get("no_auth", False)),
        limits=limits,
        models=s.get("models", ()),
        cors_origins=s.get("cors_origins", ()),
        timeouts=timeouts,
        retry=RetryPolicy(max_retries=s.get("retries", base.retry.max_retries)),
        heartbeat_s=s.get("heartbeat", base.heartbeat_s),
        send_timeout_s=s.get("send_timeout", base.send_timeout_s),
        grace_s=s.get("grace", base.grace_s),
        token_ttl_s=s.get("token_ttl", base.token_ttl_s),
        usage_log=None if usage_log in ("off", "none", "") else usage_log,
        log_prompts=bool(s.get("log_prompts", False)),
    )


def load_config(
    *, file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None, **flags: Any
) -> RelayConfig:
    """File, then environment, then ``flags`` (already parsed; None means not given)."""
    settings: dict[str, Any] = settings_from_file(file) if file is not None else {}
    settings.update(settings_from_env(environ))
    settings.update({k: v for k, v in flags.items() if v is not None})
    return build_config(settings, environ=environ)
