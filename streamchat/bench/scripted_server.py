"""``python -m streamchat.bench.scripted_server TOKENS TTFT GAP``: the child process of :class:`~streamchat.bench.wire.ScriptedServer`.

Kept out of the package's imports, so that running it as ``__main__`` loads it once.
"""

from __future__ import annotations

import dataclasses
import json
import sys


def serve(tokens: int, ttft_s: float, gap_s: float) -> None:
    """Print the URL, then serve ``tokens`` tokens per answer until standard input closes."""
    from ..testing.wire_server import WireServer, raw, text_reply

    reply = text_reply([" tok"] * tokens, ttft=ttft_s, gap=gap_s)
    # The same bytes text_reply would send, JSON-encoded once instead of per request.
    steps = tuple(
        raw(f"data: {json.dumps(s.value, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()) if s.kind == "data" else s
        for s in reply.steps
    )
    with WireServer(dataclasses.replace(reply, steps=steps), models=("scripted",)) as server:
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))
