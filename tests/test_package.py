"""The public surface: a sorted, complete __all__, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys

import streamchat

HEAVY = ("gradio", "openai", "llama_cpp", "ipywidgets", "IPython", "httpx2", "numpy", "pandas", "matplotlib", "starlette", "uvicorn")


def test_all_is_sorted_and_complete() -> None:
    assert streamchat.__all__ == sorted(streamchat.__all__)
    public = {name for name in dir(streamchat) if (not name.startswith("_") and name[0].isupper()) or name in ("stream", "astream")}
    modules = {"errors", "messages", "options", "providers", "timing", "record", "terminal", "cli", "testing"}
    assert public - modules <= set(streamchat.__all__)
    for name in streamchat.__all__:
        assert getattr(streamchat, name) is not None


def test_import_is_fast_and_pulls_in_no_optional_dependency() -> None:
    code = (
        "import sys, time, json; t = time.perf_counter(); import streamchat; "
        "print(json.dumps([time.perf_counter() - t, sorted(sys.modules)]))"
    )
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout) for _ in range(3)]
    seconds = sorted(r[0] for r in runs)[1]
    assert seconds < 0.2, f"import streamchat took {seconds:.3f} s"
    loaded = set(runs[0][1])
    assert not [m for m in HEAVY if m in loaded]


def test_event_kinds_are_literal_tags() -> None:
    kinds = {cls.__name__: cls.__dataclass_fields__["kind"].default for cls in (
        streamchat.TextDelta, streamchat.ReasoningDelta, streamchat.ToolCallDelta,
        streamchat.Usage, streamchat.Error, streamchat.Finish)}
    assert kinds == {
        "TextDelta": "text", "ReasoningDelta": "reasoning", "ToolCallDelta": "tool_call",
        "Usage": "usage", "Error": "error", "Finish": "finish",
    }
