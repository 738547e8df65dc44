"""The one settings cell of a lesson: the embedded model, or any OpenAI-compatible server."""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..providers.base import Provider


def choose_provider(
    base_url: str | None = None,
    model: str | None = None,
    *,
    key_env: str = "OPENAI_API_KEY",
    ask: Callable[[str], str] | None = None,
) -> Provider:
    """The embedded model when nothing is set; otherwise ``model`` on the server at ``base_url``.

    The key comes from ``$key_env`` or, when that is unset, is asked for
    without echo (``getpass``; leave it empty for a server that needs none).
    It is never printed, stored in the notebook, or shown in a repr.
    """
    if not base_url and not model:
        from ..providers.local import LocalProvider

        return LocalProvider()
    if not model:
        raise ConfigError("MODEL is empty: name the model to use on that server (e.g. 'gpt-4o-mini')")
    if base_url and urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigError(f"BASE_URL must start with http:// or https://, e.g. 'http://127.0.0.1:8000/v1', not {base_url!r}")
    key = os.environ.get(key_env)
    if key is None:
        if ask is None:
            from getpass import getpass

            ask = getpass
        where = urlsplit(base_url).netloc if base_url else "api.openai.com"
        key = ask(f"API key for {where} (input hidden; leave empty if the server needs none): ").strip()
    from ..providers.openai import OpenAIProvider

    return OpenAIProvider(model, base_url=base_url or None, api_key=key)
