"""The arena: one prompt to two models at once, side by side, with a live race of TTFT and tokens/s.

    python apps/arena.py [--host 127.0.0.1] [--port N] [--share]

By default side A is the embedded model and side B the scripted provider (40
tokens/s); each side can be any provider. Each side gets its own embedded
model (on half the cores) so that two embedded sides really race. The API
endpoint ``/race`` streams both answers and the race's numbers.
"""

from __future__ import annotations

import html
import os
import sys
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps._shared import (
    KINDS,
    Kind,
    Providers,
    launch,
    limits_from,
    parser,
    prepare_environment,
    settings_from,
    timeouts_for,
)
from streamchat import AsyncStream, astream
from streamchat._coalesce import DEFAULT_RATE
from streamchat.errors import StreamchatError
from streamchat.gradio import ChatSession, InputRejected, Limits, Turns, arace, check_input, note, to_prompt
from streamchat.gradio.view import WARNING, Answer
from streamchat.options import Clock, SystemClock

if TYPE_CHECKING:
    import gradio as gr

History = list[Mapping[str, Any]]
SIDES = ("A", "B")


@dataclass(frozen=True)
class ArenaConfig:
    left: Kind = "embedded"
    right: Kind = "scripted"
    limits: Limits = field(default_factory=Limits)
    rate: float = DEFAULT_RATE
    concurrency: int = 32
    max_tokens: int = 256


def race_stats(answers: Sequence[Answer | None], now_ns: int) -> list[dict[str, Any]]:
    """Each side's numbers as they stand: ttft_s, tokens, tokens_per_s, elapsed_s, status."""
    out: list[dict[str, Any]] = []
    for a in answers:
        if a is None:
            out.append({"ttft_s": None, "tokens": 0, "tokens_per_s": None, "elapsed_s": None, "status": "not sent"})
            continue
        t = a.timings
        start = a.request_start_ns
        ended = a.finish_reason is not None
        elapsed = t.duration_s if ended else ((now_ns - start) * 1e-9 if start else 0.0)
        out.append({
            "ttft_s": t.ttft_s,
            "tokens": t.output_tokens,
            "tokens_per_s": t.decode_tokens_per_s,
            "elapsed_s": elapsed,
            "status": a.finish_reason or ("streaming" if t.ttfo_s is not None else "waiting"),
        })
    return out


def race_html(stats: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> str:
    """The race as a small table with bars; the leader of each column is marked."""

    def best(key: str, low: bool) -> int | None:
        vals = [(s[key], i) for i, s in enumerate(stats) if s[key] is not None]
        if len(vals) < 2:
            return None
        return (min(vals) if low else max(vals))[1]

    first, fastest = best("ttft_s", True), best("tokens_per_s", False)
    most = max([s["tokens"] for s in stats] + [1])
    rows = []
    for i, (s, label) in enumerate(zip(stats, labels, strict=True)):
        ttft = "—" if s["ttft_s"] is None else f"{s['ttft_s']:.2f} s"
        tps = "—" if s["tokens_per_s"] is None else f"{s['tokens_per_s']:.1f}"
        elapsed = "—" if s["elapsed_s"] is None else f"{s['elapsed_s']:.1f} s"
        width = int(100 * s["tokens"] / most)
        rows.append(
            f"<tr><td><b>{SIDES[i]}</b> {html.escape(label)}</td>"
            f"<td class='sc-ttft'>{ttft}{' ◀ first' if first == i else ''}</td>"
            f"<td class='sc-tps'>{tps}{' ◀ fastest' if fastest == i else ''}</td>"
            f"<td><div style='background:var(--color-accent-soft,#fde7d3);width:{width}%;min-width:2px'>"
            f"&nbsp;{s['tokens']}</div></td><td>{elapsed}</td><td>{html.escape(str(s['status']))}</td></tr>"
        )
    head = "<tr><th>side</th><th>TTFT</th><th>tok/s</th><th>tokens</th><th>time</th><th>status</th></tr>"
    return f"<table id='race-table' style='width:100%'>{head}{''.join(rows)}</table>"


def build(sides: Sequence[Providers], config: ArenaConfig | None = None, clock: Clock | None = None) -> gr.Blocks:
    """The arena as a ``gr.Blocks`` (not launched); ``sides`` gives each side its providers."""
    import gradio as gr

    config = config or ArenaConfig()
    clock = clock or SystemClock()
    labels: dict[str, str] = {k: label.split(" (")[0] for label, k in KINDS}

    def open_side(
        history: History, kind: str, url: str, model: str, side: int, system: str, temperature: float, max_tokens: float
    ) -> tuple[AsyncStream, Turns | None, str]:
        provider, turns = sides[side].get(kind, url, model)
        s = astream(
            provider, to_prompt(history), system=system.strip() or None, temperature=float(temperature),
            max_tokens=int(max_tokens), timeouts=timeouts_for(kind),
        )
        return s, turns, f"{labels.get(kind, kind)} · {provider.model}"

    async def run(
        hist_a: History, hist_b: History, session: ChatSession,
        kind_a: str, url_a: str, model_a: str, kind_b: str, url_b: str, model_b: str,
        system: str, temperature: float, max_tokens: float,
    ) -> AsyncGenerator[tuple[History, History, list[dict[str, Any]], list[str]], None]:
        """Both sides' Chatbot values, the race's numbers and the sides' names, per frame."""
        hists = [hist_a, hist_b]
        picks = [(kind_a, url_a, model_a), (kind_b, url_b, model_b)]
        streams: list[AsyncStream] = []
        queues: list[Turns | None] = []
        slots: list[int] = []
        names = ["", ""]
        out: list[list[Any]] = [[], []]
        answers: list[Answer | None] = [None, None]
        for i, (kind, url, model) in enumerate(picks):
            try:
                s, turns, names[i] = open_side(hists[i], kind, url, model, i, system, temperature, max_tokens)
            except StreamchatError as exc:
                out[i] = [note(f"{WARNING} Not sent", str(exc))]
                continue
            streams.append(s)
            queues.append(turns)
            slots.append(i)
            answers[i] = s
        if not streams:
            yield [*hist_a, *out[0]], [*hist_b, *out[1]], race_stats(answers, clock.now_ns()), names
            return
        gen = arace(streams, rate=config.rate, clock=clock, session=session, turns=queues)
        async with aclosing(gen):
            async for frame in gen:
                for i, messages in zip(slots, frame, strict=True):
                    out[i] = list(messages)
                yield [*hist_a, *out[0]], [*hist_b, *out[1]], race_stats(answers, clock.now_ns()), names

    async def race_ui(
        hist_a: History, hist_b: History, session: ChatSession, *settings: Any
    ) -> AsyncGenerator[tuple[History, History, str], None]:
        gen = run(hist_a, hist_b, session, *settings)
        async with aclosing(gen):
            async for a, b, stats, names in gen:
                yield a, b, race_html(stats, names)

    def accept(message: str, hist_a: History, hist_b: History, session: ChatSession) -> tuple[Any, History, History]:
        try:
            check_input(message, config.limits, session)
        except InputRejected as exc:
            raise gr.Error(str(exc), title="Not sent") from None
        session.begin()
        user = {"role": "user", "content": message}
        return gr.Textbox(value="", submit_btn=False, stop_btn=True), [*hist_a, user], [*hist_b, user]

    def ready() -> Any:
        return gr.Textbox(submit_btn=True, stop_btn=False)

    async def stop(session: ChatSession) -> None:
        await session.stop()

    async def clear(session: ChatSession) -> tuple[History, History, str]:
        await session.stop()
        return [], [], ""

    async def api_race(
        message: str, session: ChatSession, kind_a: str, url_a: str, model_a: str, kind_b: str, url_b: str,
        model_b: str, system: str, temperature: float, max_tokens: float,
    ) -> AsyncGenerator[tuple[History, History, list[dict[str, Any]]], None]:
        """Race one prompt: each side's messages and the race's numbers per update; the last one final."""
        _, hist_a, hist_b = accept(message, [], [], session)
        gen = run(hist_a, hist_b, session, kind_a, url_a, model_a, kind_b, url_b, model_b, system, temperature, max_tokens)
        async with aclosing(gen):
            async for a, b, stats, names in gen:
                yield a[1:], b[1:], [{**st, "side": SIDES[i], "name": names[i]} for i, st in enumerate(stats)]

    settings = sides[0].settings
    demo = gr.Blocks(title="streamchat · arena", analytics_enabled=False)
    with demo:
        session = gr.State(ChatSession)
        gr.Markdown("## streamchat · arena\nOne prompt, two models, at the same time. The table races their "
                    "time to first token and their speed, live.")
        race_view = gr.HTML(race_html(race_stats([None, None], 0), ["", ""]), elem_id="race")
        columns = []
        with gr.Row():
            for i, default in enumerate((config.left, config.right)):
                with gr.Column(scale=1):
                    kind = gr.Radio([(label, k) for label, k in KINDS], value=default, label=f"Side {SIDES[i]}",
                                    elem_id=f"kind_{SIDES[i].lower()}")
                    url = gr.Textbox(label="Server URL", value=settings.base_url or "http://127.0.0.1:8000/v1",
                                     visible=default == "openai", interactive=settings.allow_custom_url)
                    model = gr.Textbox(label="Model", value=settings.model or "", visible=default == "openai")
                    chat = gr.Chatbot(elem_id=f"chat_{SIDES[i].lower()}", height=420, show_label=False,
                                      buttons=["copy", "copy_all"])
                columns.append((kind, url, model, chat))
        box = gr.Textbox(elem_id="box", show_label=False, placeholder="One prompt for both sides; press Enter",
                         submit_btn=True, stop_btn=False, autofocus=True)
        with gr.Row():
            system = gr.Textbox(label="System prompt", lines=1, scale=2)
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", scale=1)
            max_tokens = gr.Slider(16, 1024, value=config.max_tokens, step=16, label="Max tokens", scale=1)
            clear_btn = gr.Button("Clear", elem_id="clear", scale=0)
        api_message = gr.Textbox(visible=False)
        api_a, api_b, api_stats = gr.JSON(visible=False), gr.JSON(visible=False), gr.JSON(visible=False)
        api_btn = gr.Button(visible=False)

        (kind_a, url_a, model_a, chat_a), (kind_b, url_b, model_b, chat_b) = columns
        settings_in = [kind_a, url_a, model_a, kind_b, url_b, model_b, system, temperature, max_tokens]
        quick: dict[str, Any] = {"queue": False, "api_visibility": "undocumented"}
        box.submit(accept, [box, chat_a, chat_b, session], [box, chat_a, chat_b], **quick).success(
            race_ui, [chat_a, chat_b, session, *settings_in], [chat_a, chat_b, race_view],
            concurrency_limit=config.concurrency, show_progress="hidden", api_visibility="undocumented",
        ).then(ready, None, [box], **quick)
        box.stop(stop, [session], None, **quick)
        clear_btn.click(clear, [session], [chat_a, chat_b, race_view], **quick)
        for kind, url, model, _ in columns:
            kind.change(lambda k: (gr.Textbox(visible=k == "openai"), gr.Textbox(visible=k == "openai")),
                        [kind], [url, model], **quick)
        api_btn.click(api_race, [api_message, session, *settings_in], [api_a, api_b, api_stats], api_name="race",
                      concurrency_limit=config.concurrency, show_progress="hidden")
    return demo


def main(argv: list[str] | None = None) -> int:
    prepare_environment()
    p = parser("streamchat's arena: one prompt, two models, a live race.")
    kinds = [k for _, k in KINDS]
    p.add_argument("--left", choices=kinds, default="embedded", help="side A's provider (default embedded)")
    p.add_argument("--right", choices=kinds, default="scripted", help="side B's provider (default scripted)")
    args = p.parse_args(argv)
    half = max(1, (os.cpu_count() or 2) // 2)
    try:
        settings = settings_from(args)
        sides = [Providers(settings, local_threads=half), Providers(settings, local_threads=half)]
        for side, kind in zip(sides, (args.left, args.right), strict=True):
            if kind == "embedded":
                getattr(side.local(), "load", lambda: None)()
        config = ArenaConfig(left=args.left, right=args.right, limits=limits_from(args), concurrency=args.concurrency)
        launch(build(sides, config), args, what=f"arena, {args.left} vs {args.right}")
    except StreamchatError as exc:
        print(f"streamchat arena: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
