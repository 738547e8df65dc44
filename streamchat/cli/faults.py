"""``streamchat faults``: run the fault-injecting proxy in front of an OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..errors import StreamchatError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``faults`` and its flags."""
    cmd = commands.add_parser(
        "faults",
        help="a proxy that breaks streams on purpose, for fault drills",
        description="Forward to UPSTREAM, injecting the faults SPEC describes (see docs/faults.md); "
        "a request may carry its own in the X-Streamchat-Fault header.",
    )
    cmd.set_defaults(run=run)
    cmd.add_argument("upstream", nargs="?", help="the server's base URL, e.g. http://127.0.0.1:8000/v1")
    cmd.add_argument("--spec", default="",
                     help='e.g. "stall_after=3,stall_s=10;every=2" or a drill\'s name, "stall" (default: pass through)')
    cmd.add_argument("--list", action="store_true", help="print the drills and what streamchat does about each, then exit")
    cmd.add_argument("--host", default="127.0.0.1")
    cmd.add_argument("--port", type=int, default=8099)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; one JSON line on stdout per injected fault."""
    from ..faults.proxy import FaultProxy
    from ..faults.spec import Injector, parse

    if args.list:
        from ..faults.matrix import DRILLS

        width = max(len(d.name) for d in DRILLS)
        for d in DRILLS:
            print(f"{d.name:<{width}}  {d.how:<38}  {d.fault}")
        return 0
    if not args.upstream:
        print("streamchat: error: faults needs the upstream server's URL, e.g. http://127.0.0.1:8000/v1", file=sys.stderr)
        return 2
    try:
        injector = Injector(*parse(args.spec)) if args.spec else None
        proxy = FaultProxy(args.upstream, injector, host=args.host, port=args.port, log=lambda line: print(line, flush=True))
    except StreamchatError as exc:
        print(f"streamchat: error: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        try:
            await proxy.start()
        except OSError as exc:
            raise StreamchatError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        what = injector.spec.describe() if injector else "nothing (per-request X-Streamchat-Fault only)"
        print(f"fault proxy on {proxy.url} -> {args.upstream}; injecting {what}", file=sys.stderr, flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await proxy.aclose()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 0
    except StreamchatError as exc:
        print(f"streamchat: error: {exc}", file=sys.stderr)
        return 1
    return 0
