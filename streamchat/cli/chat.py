"""``streamchat chat``: one streamed answer, or an interactive chat, in the terminal."""

from __future__ import annotations

import argparse
import os
import sys

from .._stream import stream
from ..errors import StreamchatError
from ..messages import Message
from ..options import RetryPolicy, Timeouts
from ..providers.base import Provider
from ..terminal import print_stream

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``chat`` and its flags."""
    chat = commands.add_parser("chat", help="stream an answer in the terminal (embedded model by default)")
    chat.set_defaults(run=run)
    chat.add_argument("prompt", nargs="?", help="the prompt; without it, an interactive chat starts")
    where = chat.add_argument_group("provider (default: the embedded SmolLM2-135M-Instruct)")
    where.add_argument("--base-url", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    where.add_argument("--model", help="the model name on that server")
    where.add_argument("--api-key", help="the key (default: $OPENAI_API_KEY); never printed")
    where.add_argument("--model-path", help="a .gguf file for the embedded runner")
    where.add_argument("--scripted", action="store_true", help="a scripted stand-in: known text and timing")
    where.add_argument("--replay", metavar="FILE", help="replay a recording made with --record")
    where.add_argument("--speed", type=float, default=1.0, help="replay speed factor (default 1.0)")
    ask = chat.add_argument_group("request")
    ask.add_argument("--system", help="a system prompt")
    ask.add_argument("--temperature", type=float)
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--seed", type=int)
    out = chat.add_argument_group("output")
    out.add_argument("--events", action="store_true", help="print one JSON object per event, then a metrics line")
    out.add_argument("--record", metavar="FILE", help="also save the events as JSON Lines")
    limits = chat.add_argument_group("time limits, in seconds")
    limits.add_argument("--connect-timeout", type=float, default=10.0)
    limits.add_argument("--first-token-timeout", type=float, default=60.0)
    limits.add_argument("--idle-timeout", type=float, default=30.0)
    limits.add_argument("--total-timeout", type=float, default=600.0)
    limits.add_argument("--retries", type=int, default=2, help="retries before the first token (default 2)")


def make_provider(args: argparse.Namespace) -> Provider:
    """The provider the flags ask for."""
    chosen = [name for name in ("base_url", "scripted", "replay", "model_path") if getattr(args, name)]
    if len(chosen) > 1:
        raise StreamchatError("choose one of --base-url, --scripted, --replay, --model-path")
    if args.base_url:
        from ..providers.openai import OpenAIProvider

        if not args.model:
            raise StreamchatError("--model is required with --base-url (the name the server lists at /v1/models)")
        return OpenAIProvider(args.model, base_url=args.base_url, api_key=args.api_key)
    if args.scripted:
        from ..providers.scripted import ScriptedProvider

        return ScriptedProvider()
    if args.replay:
        from ..record import ReplayProvider

        return ReplayProvider(args.replay, speed=args.speed)
    from ..providers.local import LocalProvider

    return LocalProvider(args.model_path)


def _answer(provider: Provider, history: list[Message], args: argparse.Namespace) -> str:
    """Stream one answer; return its text (partial if stopped). Raises KeyboardInterrupt on Ctrl-C."""
    s = stream(
        provider,
        history,
        system=args.system,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
        timeouts=Timeouts(args.connect_timeout, args.first_token_timeout, args.idle_timeout, args.total_timeout),
        retry=RetryPolicy(max_retries=args.retries),
    )
    try:
        print_stream(s, events=args.events, record_to=args.record)
    except KeyboardInterrupt:
        raise _Stopped(s.text) from None
    if s.finish_reason == "error":
        raise _Failed(s.text)
    return s.text


class _Failed(Exception):
    """The answer ended in an error, already reported; ``args[0]`` is the partial text."""


class _Stopped(KeyboardInterrupt):
    """Ctrl-C during an answer; ``args[0]`` is the partial text, which stays in the conversation."""


def _interactive(provider: Provider, args: argparse.Namespace) -> int:
    history: list[Message] = []
    print(f"streamchat · {provider.name}:{provider.model} · Ctrl-C stops an answer, Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line.strip():
            continue
        history.append(Message("user", line))
        try:
            text = _answer(provider, history, args)
        except KeyboardInterrupt as stop:
            text = stop.args[0] if isinstance(stop, _Stopped) else ""
            print("[stopped]", file=sys.stderr)
        except _Failed as failed:
            text = failed.args[0]
        if not text:  # nothing came back: the next question must not repeat this one
            history.pop()
            continue
        history.append(Message("assistant", text))


def run(args: argparse.Namespace) -> int:
    """Run ``chat``; returns the exit status."""
    try:
        provider = make_provider(args)
        if args.prompt is None:
            if not sys.stdin.isatty():
                args.prompt = sys.stdin.read()
            else:
                return _interactive(provider, args)
        _answer(provider, [Message("user", args.prompt)], args)
    except _Failed:
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except StreamchatError as exc:
        print(f"streamchat: error: {exc}", file=sys.stderr)
        return EXIT_ERROR if hasattr(exc, "retryable") else EXIT_USAGE
    return 0
