"""``%load_ext streamchat``, then ``%%chat``: the cell's body is the prompt.

    %%chat                                   the embedded model (offline)
    %%chat --model gpt-4o-mini               a model on $OPENAI_BASE_URL (default api.openai.com), key from $OPENAI_API_KEY
    %%chat --base-url http://127.0.0.1:8000/v1 --model qwen3
    %%chat --provider hosted                 a provider object defined in the notebook
    %%chat --scripted                        a scripted stand-in (known text and timing)
    %%chat -c --max-tokens 200 --save answer  continue the conversation; keep the stream in `answer`

The answer streams below the cell with its latency line. Jupyter's interrupt
(■) stops it: the stream and its connection are closed and the partial text
stays. Usage mistakes give one line (``UsageError: …``), not a traceback.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any, NoReturn

from .._stream import stream
from ..errors import StreamchatError
from ..messages import Message
from ..providers.base import Provider
from .display import Surface, show

_EPILOG = "Keys are read from $OPENAI_API_KEY; never write one in a cell. Interrupt the kernel (■) to stop an answer."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from IPython.core.error import UsageError

        raise UsageError(f"%%chat: {message} (see %%chat --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _Exit(message or "")


class _Exit(Exception):
    """``--help`` was shown."""


def _parser() -> _Parser:
    p = _Parser(prog="%%chat", description="Stream an answer to the cell's text.", epilog=_EPILOG)
    p.add_argument("--model", help="a model on an OpenAI-compatible server (default server: $OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--base-url", help="the server, e.g. http://127.0.0.1:8000/v1 (needs --model)")
    p.add_argument("--provider", metavar="NAME", help="the name of a provider defined in the notebook")
    p.add_argument("--scripted", action="store_true", help="a scripted stand-in: known text and timing")
    p.add_argument("--api-key", help=argparse.SUPPRESS)
    p.add_argument("--system", help="a system prompt")
    p.add_argument("--temperature", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("-c", "--continue", dest="cont", action="store_true", help="continue the conversation of the last %%chat")
    p.add_argument("--save", metavar="NAME", help="keep the finished stream in this notebook variable")
    return p


class ChatMagic:
    """The state behind ``%%chat`` in one IPython session: providers made so far, the last conversation."""

    def __init__(self, shell: Any, *, surface: type[Surface] | None = None) -> None:
        self.shell = shell
        self.history: list[Message] = []
        self._providers: dict[tuple[str, ...], Provider] = {}
        self._surface = surface

    def __call__(self, line: str, cell: str | None = None) -> None:
        """Run ``%%chat``; returns nothing (the answer is displayed)."""
        from IPython.core.error import UsageError

        try:
            args = _parser().parse_args(shlex.split(line))
        except _Exit as shown:
            if str(shown):
                print(shown)
            return
        except ValueError as exc:  # unbalanced quotes
            raise UsageError(f"%%chat: {exc}") from None
        if args.api_key is not None:
            raise UsageError("%%chat: keys are not taken in a cell (they would be saved with the notebook): set $OPENAI_API_KEY")
        prompt = (cell or "").strip()
        if not prompt:
            raise UsageError("%%chat: the cell is empty: write the prompt on the lines below %%chat")
        history = self.history if args.cont else []
        try:
            provider = self._provider(args)
            s = stream(
                provider,
                [*history, Message("user", prompt)],
                system=args.system,
                temperature=args.temperature,
                max_tokens=args.max_tokens,
                seed=args.seed,
            )
        except StreamchatError as exc:
            raise UsageError(f"%%chat: {exc}") from None
        try:
            show(s, surface=self._surface() if self._surface else None)
        except KeyboardInterrupt:
            pass  # stopped: the partial answer is on screen, with "cancelled" in its line
        if s.text:
            self.history = [*history, Message("user", prompt), Message("assistant", s.text)]
        if args.save:
            self.shell.user_ns[args.save] = s

    def _provider(self, args: argparse.Namespace) -> Provider:
        from IPython.core.error import UsageError

        chosen = [flag for flag, on in (("--provider", args.provider), ("--scripted", args.scripted), ("--model/--base-url", args.model or args.base_url)) if on]
        if len(chosen) > 1:
            raise UsageError(f"%%chat: choose one of {' and '.join(chosen)}")
        if args.provider:
            found = self.shell.user_ns.get(args.provider)
            if found is None:
                raise UsageError(f"%%chat: no variable named {args.provider!r} in this notebook")
            if not isinstance(found, Provider):
                raise UsageError(f"%%chat: {args.provider!r} is a {type(found).__name__}, not a provider")
            return found
        if args.scripted:
            key: tuple[str, ...] = ("scripted",)
        elif args.model or args.base_url:
            if not args.model:
                raise UsageError("%%chat: --base-url needs --model (the name the server lists at /v1/models)")
            key = ("openai", args.model, args.base_url or "")
        else:
            key = ("local",)
        if key not in self._providers:
            self._providers[key] = _make(key)
        return self._providers[key]


def _make(key: tuple[str, ...]) -> Provider:
    if key[0] == "scripted":
        from ..providers.scripted import ScriptedProvider

        return ScriptedProvider()
    if key[0] == "openai":
        from ..providers.openai import OpenAIProvider

        return OpenAIProvider(key[1], base_url=key[2] or None)
    from ..providers.local import LocalProvider

    return LocalProvider()


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%chat`` (``%load_ext streamchat`` calls this)."""
    magic = ChatMagic(ipython)
    ipython.register_magic_function(magic, magic_kind="cell", magic_name="chat")
