"""What the benchmark asks: a built-in set, a file, or synthetic prompts of a given length.

A synthetic prompt's length in tokens is approximate unless a tokenizer is
given (then it is trimmed to the exact count for *that* tokenizer); without
one, it assumes about four characters per token, which is typical for
English with today's tokenizers and can be off by 20% or more for others.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from ..messages import Message, to_messages

PromptSource = Literal["builtin", "file", "synthetic"]


@dataclass(frozen=True, slots=True)
class BenchPrompt:
    """One prompt: the messages sent, where they came from, and their length if known."""

    messages: tuple[Message, ...]
    source: PromptSource
    tokens: int | None = None
    """Length in tokens: exact if ``tokens_exact``, otherwise an estimate (or None)."""
    tokens_exact: bool = False

    @property
    def text(self) -> str:
        """The last user message, for tables and logs."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


BUILTIN = (
    "Explain in three sentences why the sky is blue.",
    "Write a haiku about a train at night.",
    "List five practical tips for writing clear error messages.",
    "What is the difference between a process and a thread? Answer briefly.",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Give three arguments for and three against working from home.",
    "Explain what a hash table is to a twelve-year-old.",
    "Translate 'Where is the railway station?' into French, German and Spanish.",
    "Describe the water cycle step by step.",
    "Suggest a name and a tagline for a small bakery that sells sourdough.",
    "Why do we have leap years? Keep it short.",
    "Write a limerick about a cat who learns to code.",
    "What are the main causes of inflation? Use a bulleted list.",
    "Explain recursion with an example in plain words.",
    "Plan a one-day walking tour of a city of your choice.",
)


def builtin_prompts() -> tuple[BenchPrompt, ...]:
    """Sixteen short, varied everyday questions (explain, list, write code, a story)."""
    return tuple(BenchPrompt(to_messages(p), "builtin") for p in BUILTIN)


def load_prompts(path: str | os.PathLike[str]) -> tuple[BenchPrompt, ...]:
    """Prompts from a file.

    - ``.txt``: one prompt per line (blank lines are skipped);
    - ``.jsonl``: one per line, a string, ``{"prompt": ...}`` or ``{"messages": [...]}``;
    - ``.json``: a list of any of those.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"no prompt file at {file}" + (": it is a directory" if file.is_dir() else ""))
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not UTF-8 text") from None
    if file.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{file}: not valid JSON ({exc})") from None
        if not isinstance(items, list):
            raise ConfigError(f"{file}: expected a JSON list of prompts")
        prompts = [_prompt(item, f"{file}: item {i}") for i, item in enumerate(items)]
    elif file.suffix.lower() == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise ConfigError(f"{file}:{number}: not a JSON value") from None
            prompts.append(_prompt(item, f"{file}:{number}"))
    else:
        prompts = [BenchPrompt(to_messages(line.strip()), "file") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"{file} holds no prompts")
    return tuple(prompts)


def _prompt(item: Any, where: str) -> BenchPrompt:
    try:
        if isinstance(item, str):
            return BenchPrompt(to_messages(item), "file")
        if isinstance(item, Mapping):
            if isinstance(item.get("prompt"), str):
                return BenchPrompt(to_messages(item["prompt"], system=item.get("system")), "file")
            messages = item.get("messages")
            if isinstance(messages, list):
                return BenchPrompt(to_messages(messages), "file")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f'{where}: expected a string, {{"prompt": ...}} or {{"messages": [...]}}')


# A plain vocabulary: common words keep a tokenizer near one token per word.
_VOCABULARY = (
    "time year people way day man thing woman life child world school state family student group country problem "
    "hand part place case week company system program question work government number night point home water room "
    "mother area money story fact month lot right study book eye job word business issue side kind head house "
    "service friend father power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war history party result "
    "change morning reason research girl guy moment air teacher force education river garden music window light"
)
_WORDS = tuple(_VOCABULARY.split())

_INSTRUCTION = "Continue this story:\n"


def synthetic_prompts(
    n: int,
    tokens: int,
    *,
    seed: int | None = 0,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[BenchPrompt, ...]:
    """``n`` distinct prompts of about ``tokens`` tokens each (random words, so no two share a cache prefix).

    With ``count_tokens`` (e.g. ``LocalProvider().count_tokens``), each is
    trimmed to exactly ``tokens`` by that tokenizer; otherwise the length is an
    estimate at four characters per token.
    """
    if n < 1:
        raise ConfigError(f"the number of synthetic prompts must be at least 1, not {n}")
    if tokens < 16:
        raise ConfigError(f"a synthetic prompt needs at least 16 tokens, not {tokens}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(tokens + 8)]
        text = _fit(words, tokens, count_tokens)
        exact = count_tokens is not None and count_tokens(text) == tokens
        estimate = count_tokens(text) if count_tokens is not None else round(len(text) / 4)
        out.append(BenchPrompt(to_messages(text), "synthetic", estimate, exact))
    return tuple(out)


def _fit(words: Sequence[str], tokens: int, count: Callable[[str], int] | None) -> str:
    def text(k: int) -> str:
        return _INSTRUCTION + " ".join(words[:k])

    if count is None:
        target = tokens * 4
        k = 0
        while k < len(words) and len(text(k + 1)) <= target:
            k += 1
        return text(max(k, 1))
    lo, hi = 1, len(words)
    while count(text(hi)) < tokens:
        words = [*words, *words]
        hi = len(words)
    while lo < hi:  # the most words that stay within ``tokens``
        mid = (lo + hi + 1) // 2
        if count(text(mid)) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return text(lo)
