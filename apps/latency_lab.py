"""The latency lab, for teaching: one scripted answer shown blocking and streamed, side by side.

    python apps/latency_lab.py [--host 127.0.0.1] [--port N] [--share]

Sliders set the time to first token, the speed and the chunk size; a fault can
be injected (rate limit, drop, stall, error). Both sides get the very same
answer on the very same schedule: the blocking side shows it only once it is
complete, the streamed side as it comes. The API endpoint is ``/run``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps._shared import launch, parser, prepare_environment
from streamchat import AsyncStream, Fault, ScriptedProvider, Timeouts, astream
from streamchat._coalesce import DEFAULT_RATE
from streamchat.errors import StreamchatError
from streamchat.gradio import AnswerView, ChatSession, MessageDict, arace
from streamchat.gradio.view import Answer
from streamchat.options import Clock, SystemClock

if TYPE_CHECKING:
    import gradio as gr

QUESTION = "Why does streaming make a chat feel faster?"
ANSWER = (
    "A language model writes one token at a time. Without streaming, the server waits until the "
    "last token exists and then sends everything at once, so you stare at an empty screen for the "
    "whole generation time. With streaming, each token is sent as soon as it exists: the first words "
    "appear after the time to first token, and you read while the rest is written. The total time "
    "does not change much; what changes is how long you wait before anything happens. "
)
FAULTS: list[tuple[str, str]] = [
    ("none", "none"),
    ("rate limit (429, retried after 1 s)", "rate_limit"),
    ("connection drops mid-answer", "drop"),
    ("stall mid-answer (3 s)", "stall"),
    ("stall longer than the idle timeout (5 s)", "stall_timeout"),
    ("error message mid-answer", "error_event"),
]
IDLE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LabSettings:
    """One experiment."""

    ttft: float = 1.5
    tokens_per_s: float = 15.0
    chunk_tokens: int = 1
    words: int = 90
    fault: str = "none"
    fault_after: int = 25


def answer_text(words: int) -> str:
    """The lesson's answer, cut or repeated to ``words`` words."""
    pool = ANSWER.split()
    out = [pool[i % len(pool)] for i in range(max(1, words))]
    return " ".join(out) + ("" if out[-1].endswith(".") else ".")


def fault_for(kind: str, after: int) -> list[Fault]:
    if kind == "none":
        return []
    if kind == "rate_limit":
        return [Fault("rate_limit", times=1, retry_after=1.0)]
    if kind == "stall":
        return [Fault("stall", after_tokens=after, stall_s=3.0)]
    if kind == "stall_timeout":
        return [Fault("stall", after_tokens=after, stall_s=IDLE_TIMEOUT_S + 3.0)]
    if kind == "drop":
        return [Fault("drop", after_tokens=after)]
    if kind == "error_event":
        return [Fault("error_event", after_tokens=after, message="the model failed mid-answer (scripted)")]
    raise ValueError(f"unknown fault {kind!r}: one of {', '.join(k for _, k in FAULTS)}")


def provider_for(lab: LabSettings) -> ScriptedProvider:
    """Each side gets its own provider: a fault that hits 'the first request' hits both."""
    return ScriptedProvider(
        answer_text(lab.words), ttft=lab.ttft, tokens_per_s=lab.tokens_per_s, chunk_tokens=max(1, lab.chunk_tokens),
        seed=0, faults=fault_for(lab.fault, lab.fault_after),
    )


class BlockingView(AnswerView):
    """Draws nothing of the answer until it is complete: what a non-streaming client shows."""

    def messages(self, answer: Answer, now_ns: int) -> list[MessageDict]:
        if answer.finish_reason is not None:
            return super().messages(answer, now_ns)
        self.frames += 1
        start = answer.request_start_ns
        waited = (now_ns - start) * 1e-9 if start else 0.0
        return [{"role": "assistant", "content": "",
                 "metadata": {"title": f"Waiting for the whole answer… {waited:.1f} s", "status": "pending"}}]


def summary(blocking: Answer, streamed: Answer, now_ns: int) -> dict[str, Any]:
    """When the first words reached the screen on each side, and when the whole answer did."""
    sb, ss = blocking.timings, streamed.timings
    first_blocking = sb.duration_s if blocking.finish_reason is not None and blocking.text else None
    first_streamed = ss.ttft_s
    return {
        "first_words_blocking_s": first_blocking,
        "first_words_streamed_s": first_streamed,
        "whole_answer_s": ss.duration_s,
        "tokens": ss.output_tokens,
        "finish_reason": streamed.finish_reason,
        "attempts": ss.attempts,
        "error": streamed.error.message if streamed.error else None,
    }


def summary_markdown(s: dict[str, Any]) -> str:
    def sec(x: float | None) -> str:
        return "…" if x is None else f"{x:.1f} s"

    lines = [
        f"**First words on screen** · blocking: **{sec(s['first_words_blocking_s'])}** · "
        f"streamed: **{sec(s['first_words_streamed_s'])}**"
    ]
    fb, fs = s["first_words_blocking_s"], s["first_words_streamed_s"]
    if fb and fs:
        same = "" if s["error"] else ", for the same total time"
        lines.append(f"Streaming showed the first words **{fb / fs:.1f}× sooner**{same}.")
    if s["attempts"] > 1:
        lines.append(f"The request was sent {s['attempts']} times: retries happen only before the first token.")
    if s["error"]:
        lines.append(f"The stream failed: *{s['error']}*. The streamed side keeps what it showed; "
                     "the blocking side shows the partial text only now.")
    return "\n\n".join(lines)


def build(rate: float = DEFAULT_RATE, clock: Clock | None = None, concurrency: int = 32) -> gr.Blocks:
    """The lab as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    clock = clock or SystemClock()

    async def experiment(
        session: ChatSession, ttft: float, tokens_per_s: float, chunk_tokens: float, words: float,
        fault: str, fault_after: float,
    ) -> AsyncGenerator[tuple[list[Any], list[Any], dict[str, Any]], None]:
        lab = LabSettings(float(ttft), float(tokens_per_s), int(chunk_tokens), int(words), fault, int(fault_after))
        try:
            fault_for(lab.fault, lab.fault_after)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        timeouts = Timeouts(idle=IDLE_TIMEOUT_S)
        streams: Sequence[AsyncStream] = [
            astream(provider_for(lab), QUESTION, timeouts=timeouts) for _ in range(2)
        ]
        user = {"role": "user", "content": QUESTION}
        gen = arace(streams, [BlockingView(), AnswerView()], rate=rate, clock=clock, session=session)
        async with aclosing(gen):
            async for blocking, streamed in gen:
                yield [user, *blocking], [user, *streamed], summary(streams[0], streams[1], clock.now_ns())

    async def run_ui(session: ChatSession, *settings: Any) -> AsyncGenerator[tuple[list[Any], list[Any], str], None]:
        session.begin()
        gen = experiment(session, *settings)
        async with aclosing(gen):
            async for blocking, streamed, facts in gen:
                yield blocking, streamed, summary_markdown(facts)

    async def api_run(
        session: ChatSession, ttft: float, tokens_per_s: float, chunk_tokens: float, words: float,
        fault: str, fault_after: float,
    ) -> AsyncGenerator[tuple[list[Any], list[Any], dict[str, Any]], None]:
        """Run one experiment: both sides' messages and the summary per update; the last one final."""
        session.begin()
        gen = experiment(session, ttft, tokens_per_s, chunk_tokens, words, fault, fault_after)
        async with aclosing(gen):
            async for blocking, streamed, facts in gen:
                yield blocking[1:], streamed[1:], facts

    async def stop(session: ChatSession) -> None:
        await session.stop()

    demo = gr.Blocks(title="streamchat · latency lab", analytics_enabled=False)
    with demo:
        session = gr.State(ChatSession)
        gr.Markdown(
            "## streamchat · latency lab\nThe same scripted answer, on the same schedule, twice. **Left**: a client "
            "that waits for the whole answer. **Right**: a client that streams. Move the sliders and press Run; "
            "inject a fault to see what each side shows when things go wrong."
        )
        with gr.Row():
            ttft = gr.Slider(0, 5, value=LabSettings.ttft, step=0.1, label="Time to first token (s)", elem_id="ttft")
            tps = gr.Slider(2, 200, value=LabSettings.tokens_per_s, step=1, label="Tokens per second", elem_id="tps")
            chunk = gr.Slider(1, 16, value=LabSettings.chunk_tokens, step=1, label="Tokens per chunk", elem_id="chunk")
            words = gr.Slider(10, 400, value=LabSettings.words, step=10, label="Answer length (words)", elem_id="words")
        with gr.Row():
            fault = gr.Radio(FAULTS, value="none", label="Fault", elem_id="fault", scale=3)
            fault_after = gr.Slider(0, 200, value=LabSettings.fault_after, step=1, label="Fault after N tokens",
                                    elem_id="fault_after", scale=1)
        with gr.Row():
            run_btn = gr.Button("Run", variant="primary", elem_id="run")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        facts = gr.Markdown(elem_id="lab_summary")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Blocking: the whole answer at once")
                blocking = gr.Chatbot(elem_id="blocking", height=420, show_label=False, buttons=["copy"])
            with gr.Column():
                gr.Markdown("### Streamed: tokens as they come")
                streamed = gr.Chatbot(elem_id="streamed", height=420, show_label=False, buttons=["copy"])
        api_a, api_b, api_facts = gr.JSON(visible=False), gr.JSON(visible=False), gr.JSON(visible=False)
        api_btn = gr.Button(visible=False)

        knobs = [ttft, tps, chunk, words, fault, fault_after]
        run_btn.click(run_ui, [session, *knobs], [blocking, streamed, facts], concurrency_limit=concurrency,
                      show_progress="hidden", api_visibility="undocumented")
        stop_btn.click(stop, [session], None, queue=False, api_visibility="undocumented")
        api_btn.click(api_run, [session, *knobs], [api_a, api_b, api_facts], api_name="run",
                      concurrency_limit=concurrency, show_progress="hidden")
    return demo


def main(argv: list[str] | None = None) -> int:
    prepare_environment()
    args = parser("streamchat's latency lab: blocking vs streamed, with faults on demand.", providers=False).parse_args(argv)
    try:
        launch(build(concurrency=args.concurrency), args, what="latency lab")
    except StreamchatError as exc:
        print(f"streamchat latency lab: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
