"""Record a stream as JSON Lines, replay it at the same or a scaled speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Run

from streamchat import Fault, ScriptedProvider, stream
from streamchat.errors import ConfigError
from streamchat.record import ReplayProvider, record


def recorded(tmp_path: Path, **kwargs: object) -> tuple[Path, object]:
    path = tmp_path / "answer.jsonl"
    s = stream(ScriptedProvider("alpha beta gamma delta", reasoning="hmm", **kwargs), "hi")  # type: ignore[arg-type]
    list(record(s, path))
    return path, s


def test_record_writes_one_line_per_event(tmp_path: Path) -> None:
    path, s = recorded(tmp_path, ttft=0.05, tokens_per_s=100)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["type"] for r in rows][-2:] == ["usage", "finish"]
    assert "".join(r.get("text", "") for r in rows if r["type"] == "text") == "alpha beta gamma delta"
    assert rows[0]["t"] == pytest.approx(0.05, abs=0.03)
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)


def test_replay_reproduces_text_and_timing(tmp_path: Path, run: Run) -> None:
    path, original = recorded(tmp_path, ttft=0.1, tokens_per_s=50)
    s, _ = run(ReplayProvider(path))
    assert (s.text, s.reasoning, s.finish_reason) == (original.text, original.reasoning, "stop")  # type: ignore[attr-defined]
    assert s.usage.completion_tokens == original.usage.completion_tokens  # type: ignore[attr-defined]
    assert s.timings.ttfo_s == pytest.approx(original.timings.ttfo_s, abs=0.03)  # type: ignore[attr-defined]
    assert s.timings.e2e_s == pytest.approx(original.timings.e2e_s, abs=0.03)  # type: ignore[attr-defined]


def test_replay_at_double_speed_halves_the_time(tmp_path: Path, run: Run) -> None:
    path, original = recorded(tmp_path, ttft=0.1, tokens_per_s=25)
    s, _ = run(ReplayProvider(path, speed=2.0))
    assert s.timings.e2e_s == pytest.approx(original.timings.e2e_s / 2, abs=0.03)  # type: ignore[attr-defined]


def test_a_recorded_failure_replays_as_a_failure(tmp_path: Path, run: Run) -> None:
    path, original = recorded(tmp_path, ttft=0, tokens_per_s=0, faults=[Fault("drop", after_tokens=2)])
    s, _ = run(ReplayProvider(path))
    assert s.finish_reason == "error" and s.text == original.text  # type: ignore[attr-defined]


def test_bad_recordings_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no recording at"):
        ReplayProvider(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "text", "t": 0, "text": "a"}\nnot json\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        ReplayProvider(bad)
    with pytest.raises(ConfigError, match="speed must be positive"):
        ReplayProvider(tmp_path / "missing.jsonl", speed=0)
