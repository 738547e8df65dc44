"""``streamchat serve``: the relay server in front of any provider (embedded model by default)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from dataclasses import replace
from typing import Any

from ..errors import StreamchatError
from .chat import make_provider

EXIT_ERROR, EXIT_USAGE = 1, 2

_SETTING_FLAGS = {
    # flag: setting name (see streamchat.relay.config)
    "rpm": "rpm", "tpm": "tpm", "streams_per_key": "streams_per_key", "max_streams": "max_streams",
    "max_body_bytes": "max_body_bytes", "max_messages": "max_messages", "max_tokens": "max_tokens",
    "models": "models", "keys_file": "keys_file", "first_token_timeout": "first_token_timeout",
    "idle_timeout": "idle_timeout", "total_timeout": "total_timeout", "retries": "retries",
    "heartbeat": "heartbeat", "send_timeout": "send_timeout", "grace": "grace", "token_ttl": "token_ttl",
    "usage_log": "usage_log",
}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and its flags."""
    serve = commands.add_parser(
        "serve",
        help="serve a provider as an OpenAI-compatible endpoint, with SSE, WebSocket and NDJSON streams",
        description="Every setting also reads from $STREAMCHAT_RELAY_<NAME> and from --config FILE (TOML); flags win.",
    )
    serve.set_defaults(run=run)
    net = serve.add_argument_group("listening")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    net.add_argument("--config", metavar="FILE", help="a TOML file of settings")
    where = serve.add_argument_group("provider (default: the embedded SmolLM2-135M-Instruct)")
    where.add_argument("--base-url", help="an upstream OpenAI-compatible server, e.g. https://api.openai.com/v1")
    where.add_argument("--model", help="the model name upstream")
    where.add_argument("--api-key", help="the upstream key (default: $OPENAI_API_KEY); it never leaves the server")
    where.add_argument("--model-path", help="a .gguf file for the embedded runner")
    where.add_argument("--scripted", action="store_true", help="a scripted stand-in: known text and timing")
    where.add_argument("--replay", metavar="FILE", help="replay a recording made with --record")
    where.add_argument("--speed", type=float, default=1.0, help="replay speed factor (default 1.0)")
    auth = serve.add_argument_group("authentication")
    auth.add_argument("--keys-file", help="client keys, one 'id:secret' per line (also $STREAMCHAT_RELAY_KEYS)")
    auth.add_argument("--no-auth", action="store_true", default=None,
                      help="serve without keys (without keys, the default on 127.0.0.1 only)")
    auth.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                      help="a site allowed to call from the browser, e.g. https://example.org (repeatable; none by default)")
    limits = serve.add_argument_group("limits ('off' or 0 switches one off)")
    limits.add_argument("--rpm", help="requests per minute, per key (default 60)")
    limits.add_argument("--tpm", help="tokens per minute, per key (default 200000)")
    limits.add_argument("--streams-per-key", help="concurrent streams per key (default 4)")
    limits.add_argument("--max-streams", help="concurrent streams in all (default 64)")
    limits.add_argument("--max-body-bytes", help="request body size (default 262144)")
    limits.add_argument("--max-messages", help="messages per request (default 100)")
    limits.add_argument("--max-tokens", help="the cap on max_tokens, and its default (default 1024)")
    limits.add_argument("--models", help="model names callers may ask for, comma-separated (default: the provider's)")
    times = serve.add_argument_group("time, in seconds")
    times.add_argument("--first-token-timeout", help="default 60")
    times.add_argument("--idle-timeout", help="longest gap between chunks (default 30)")
    times.add_argument("--total-timeout", help="whole answer (default 300)")
    times.add_argument("--retries", help="upstream retries before the first token (default 2)")
    times.add_argument("--heartbeat", help="SSE heartbeat interval (default 15)")
    times.add_argument("--send-timeout", help="drop a client that reads nothing this long (default 30)")
    times.add_argument("--grace", help="on shutdown, how long running streams may finish (default 10)")
    times.add_argument("--token-ttl", help="lifetime of URL tokens from POST /v1/tokens (default 300)")
    log = serve.add_argument_group("usage log")
    log.add_argument("--usage-log", metavar="PATH", help="one JSON line per request: a file, '-' (stderr, default) or 'off'")
    log.add_argument("--log-prompts", action="store_true", default=None, help="also log prompt text (off by default)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    from ..relay.config import parse_setting

    out: dict[str, Any] = {}
    for attr, name in _SETTING_FLAGS.items():
        raw = getattr(args, attr)
        if raw is not None:
            out[name] = parse_setting(name, raw, "--" + attr.replace("_", "-"))
    if args.cors_origin:
        out["cors_origins"] = tuple(args.cors_origin)
    if args.no_auth:
        out["no_auth"] = True
    if args.log_prompts:
        out["log_prompts"] = True
    return out


def _banner(provider: Any, config: Any, url: str, anonymous: bool) -> str:
    limits = config.limits

    def lim(value: int | None, unit: str) -> str:
        return f"{value} {unit}" if value is not None else f"no {unit} limit"

    models = ", ".join(config.models or (provider.model,))
    auth = "none: anyone who can reach this address" if anonymous else (
        f"{len(config.keys)} key(s): {', '.join(k.id for k in config.keys)}"
    )
    usage = {"-": "standard error", None: "off"}.get(config.usage_log, config.usage_log)
    return "\n".join([
        f"streamchat relay · {provider.name}:{provider.model} · {url}",
        f"  OpenAI base URL  {url}/v1   (models: {models})",
        f"  page             {url}/",
        f"  auth             {auth}",
        f"  limits           {lim(limits.requests_per_minute, 'req/min')}, {lim(limits.tokens_per_minute, 'tok/min')} per key; "
        f"{lim(limits.streams_per_key, 'streams')} per key, {lim(limits.streams_total, 'streams')} in all; "
        f"max_tokens ≤ {limits.max_tokens}",
        f"  usage log        {usage}",
        f"Ctrl-C or SIGTERM: stop accepting, let running answers finish ({config.grace_s:g} s); twice: stop now",
    ])


def run(args: argparse.Namespace) -> int:
    """Run ``serve`` until a signal; returns the exit status."""
    try:
        from ..relay.config import load_config

        flags = _flags(args)
        config = load_config(file=args.config, **flags)
        anonymous = config.allow_anonymous
        if not config.keys and not anonymous:
            if not _loopback(args.host):
                raise StreamchatError(
                    f"refusing to serve {args.host} without keys: set STREAMCHAT_RELAY_KEYS or --keys-file "
                    "(or pass --no-auth if anyone who can reach it may use it)"
                )
            config, anonymous = replace(config, allow_anonymous=True), True
        if args.base_url and args.model and not config.models:
            config = replace(config, models=(args.model,))
        provider = make_provider(args)
        from ..relay.app import create_app
        from ..relay.server import bind
        from ..relay.server import run as serve

        app = create_app(provider, config)
        try:
            sock = bind(args.host, args.port)
        except OSError as exc:
            print(f"streamchat: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(_banner(provider, config, f"http://{host}:{sock.getsockname()[1]}", anonymous), file=sys.stderr, flush=True)
        serve(app, sock)
    except StreamchatError as exc:
        print(f"streamchat: error: {exc}", file=sys.stderr)
        return EXIT_ERROR if hasattr(exc, "retryable") else EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    return 0
