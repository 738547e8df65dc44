"""The chat app: stream answers from the embedded model, any OpenAI-compatible server, or a script.

    python apps/chat.py [--host 127.0.0.1] [--port N] [--share] [--provider embedded|openai|scripted]

Each answer shows its reasoning as a collapsible thought, its tool calls, and a
latency line (TTFT, tokens, tokens/s, finish reason) that is live while it
streams. Stop closes the upstream stream at once and keeps the text. The API
endpoint ``/chat`` streams one answer's messages to ``gradio_client``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Mapping
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
from streamchat import RetryPolicy, Timeouts, astream
from streamchat._coalesce import DEFAULT_RATE
from streamchat.errors import StreamchatError
from streamchat.gradio import (
    ChatSession,
    InputRejected,
    Limits,
    MessageDict,
    astream_answer,
    check_input,
    content_text,
    note,
    to_prompt,
    without_last_answer,
)
from streamchat.gradio.view import WARNING

if TYPE_CHECKING:
    import gradio as gr

History = list[Mapping[str, Any]]
EXAMPLES = ["Why is the sky blue?", "Write a haiku about waiting for the first token.", "List three uses of Python."]


@dataclass(frozen=True)
class ChatConfig:
    """What the app offers; the provider details live in :class:`Providers`."""

    provider: Kind = "embedded"
    limits: Limits = field(default_factory=Limits)
    rate: float = DEFAULT_RATE
    """Screen updates per second while an answer streams."""
    concurrency: int = 32
    temperature: float = 0.7
    max_tokens: int = 512
    timeouts: Timeouts | None = None
    """Each answer's time limits (default :class:`Timeouts`; the embedded model waits longer for its first token)."""
    retry: RetryPolicy | None = None
    """Retries before the first token (default :class:`RetryPolicy`)."""


def build(providers: Providers, config: ChatConfig | None = None) -> gr.Blocks:
    """The app as a ``gr.Blocks`` (not launched)."""
    import gradio as gr

    config = config or ChatConfig()
    limits = config.limits
    settings = providers.settings

    async def respond(
        history: History, session: ChatSession, kind: str, url: str, model: str,
        system: str, temperature: float, max_tokens: float,
    ) -> AsyncGenerator[list[Any], None]:
        try:
            provider, turns = providers.get(kind, url, model)
            s = astream(
                provider, to_prompt(history), system=system.strip() or None, temperature=float(temperature),
                max_tokens=int(max_tokens), timeouts=timeouts_for(kind, config.timeouts), retry=config.retry,
            )
        except StreamchatError as exc:
            yield [*history, note(f"{WARNING} Not sent", str(exc))]
            return
        gen = astream_answer(s, session=session, turns=turns, rate=config.rate)
        async with aclosing(gen):
            async for messages in gen:
                yield [*history, *messages]

    def accept(message: str, history: History, session: ChatSession) -> tuple[Any, History]:
        try:
            check_input(message, limits, session)
        except InputRejected as exc:
            raise gr.Error(str(exc), title="Not sent") from None
        session.begin()
        return gr.Textbox(value="", submit_btn=False, stop_btn=True), [*history, {"role": "user", "content": message}]

    def accept_retry(history: History, session: ChatSession) -> tuple[Any, History]:
        kept = without_last_answer(history)
        if not kept:
            raise gr.Error("Nothing to retry yet: send a message first.", title="Not sent")
        try:
            check_input(content_text(kept[-1].get("content")), limits, session)
        except InputRejected as exc:
            raise gr.Error(str(exc), title="Not sent") from None
        session.begin()
        return gr.Textbox(submit_btn=False, stop_btn=True), kept

    def ready() -> Any:
        return gr.Textbox(submit_btn=True, stop_btn=False)

    async def stop(session: ChatSession) -> None:
        await session.stop()

    async def clear(session: ChatSession) -> History:
        await session.stop()
        return []

    async def api_chat(
        message: str, session: ChatSession, kind: str, url: str, model: str,
        system: str, temperature: float, max_tokens: float,
    ) -> AsyncGenerator[list[MessageDict], None]:
        """Stream one answer to ``message``: a list of Chatbot messages per update, the last one final."""
        try:
            check_input(message, limits, session)
        except InputRejected as exc:
            raise gr.Error(str(exc), title="Not sent") from None
        session.begin()
        gen = respond([{"role": "user", "content": message}], session, kind, url, model, system, temperature, max_tokens)
        async with aclosing(gen):
            async for history in gen:
                yield history[1:]

    is_server = config.provider == "openai"
    demo = gr.Blocks(title="streamchat · chat", analytics_enabled=False, fill_height=True)
    with demo:
        session = gr.State(ChatSession)
        gr.Markdown(
            "## streamchat · chat\nAnswers stream as they are written. Stop keeps the text; "
            "the line under each answer shows its latency (open it for every metric)."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    elem_id="chat", height=560, buttons=["copy", "copy_all"], show_label=False,
                    placeholder="Ask something below. The embedded model is small: short questions work best.",
                )
                box = gr.Textbox(
                    elem_id="box", show_label=False, placeholder="Type a message and press Enter",
                    submit_btn=True, stop_btn=False, autofocus=True, max_lines=8,
                )
                with gr.Row():
                    retry_btn = gr.Button("↻ Retry last answer", elem_id="retry", size="sm")
                    clear_btn = gr.Button("Clear chat", elem_id="clear", size="sm")
                gr.Examples(EXAMPLES, inputs=[box], label="Examples")
            with gr.Column(scale=1, min_width=260):
                kind = gr.Radio([(label, k) for label, k in KINDS], value=config.provider, label="Provider", elem_id="provider")
                url = gr.Textbox(
                    label="Server URL", value=settings.base_url or "http://127.0.0.1:8000/v1", visible=is_server,
                    interactive=settings.allow_custom_url, elem_id="url",
                )
                model = gr.Textbox(label="Model", value=settings.model or "", visible=is_server, elem_id="model")
                key_note = gr.Markdown(providers.key_note(), visible=is_server)
                system = gr.Textbox(label="System prompt", lines=2, placeholder="e.g. Answer in one sentence.", elem_id="system")
                temperature = gr.Slider(0, 2, value=config.temperature, step=0.05, label="Temperature", elem_id="temperature")
                max_tokens = gr.Slider(16, 2048, value=config.max_tokens, step=16, label="Max tokens", elem_id="max_tokens")
                gr.Markdown(_limits_note(limits))
        api_message = gr.Textbox(visible=False)
        api_out = gr.JSON(visible=False)
        api_btn = gr.Button(visible=False)

        settings_in = [kind, url, model, system, temperature, max_tokens]
        answer = {"fn": respond, "inputs": [chatbot, session, *settings_in], "outputs": [chatbot],
                  "concurrency_limit": config.concurrency, "show_progress": "hidden", "api_visibility": "undocumented"}
        quick: dict[str, Any] = {"queue": False, "api_visibility": "undocumented"}
        box.submit(accept, [box, chatbot, session], [box, chatbot], **quick).success(**answer).then(ready, None, [box], **quick)
        for retry_event in (retry_btn.click, chatbot.retry):
            retry_event(accept_retry, [chatbot, session], [box, chatbot], **quick).success(**answer).then(
                ready, None, [box], **quick
            )
        box.stop(stop, [session], None, **quick)
        clear_btn.click(clear, [session], [chatbot], **quick)
        chatbot.clear(stop, [session], None, **quick)
        kind.change(
            lambda k: (gr.Textbox(visible=k == "openai"), gr.Textbox(visible=k == "openai"), gr.Markdown(visible=k == "openai")),
            [kind], [url, model, key_note], **quick,
        )
        api_btn.click(
            api_chat, [api_message, session, *settings_in], [api_out], api_name="chat",
            concurrency_limit=config.concurrency, show_progress="hidden",
        )
    return demo


def _limits_note(limits: Limits) -> str:
    parts = []
    if limits.max_input_chars:
        parts.append(f"messages up to {limits.max_input_chars:,} characters")
    if limits.max_requests:
        parts.append(f"{limits.max_requests} requests per {limits.window_s:g} s")
    return ("Limits: " + ", ".join(parts) + ".") if parts else ""


def main(argv: list[str] | None = None) -> int:
    prepare_environment()
    p = parser("streamchat's chat app (the embedded model by default).")
    p.add_argument("--provider", choices=[k for _, k in KINDS], default=None,
                   help="the provider chosen at start (default: openai with --base-url and --model, else embedded)")
    args = p.parse_args(argv)
    kind: Kind = args.provider or ("openai" if args.base_url and args.model else "embedded")
    try:
        providers = Providers(settings_from(args))
        if kind == "embedded":
            print("loading the embedded model (SmolLM2-135M-Instruct)…", file=sys.stderr, flush=True)
            providers.local()
            getattr(providers.local(), "load", lambda: None)()
        demo = build(providers, ChatConfig(provider=kind, limits=limits_from(args), concurrency=args.concurrency))
        launch(demo, args, what=f"chat app, provider {kind}")
    except StreamchatError as exc:
        print(f"streamchat chat app: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
