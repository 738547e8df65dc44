"""Hugging Face Space entry point: the streamchat chat app.

Spaces run ``python app.py``. The app streams from the embedded model (SmolLM2-135M,
on the Space's CPU) unless the Space has ``OPENAI_BASE_URL`` and ``OPENAI_MODEL``
variables, with the ``OPENAI_API_KEY`` secret, in which case it starts on that
server; the key is sent only there and never to the browser. See README.md for
the other settings (login, limits).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# In a Space, streamchat/ and apps/ sit next to this file; in the repository, two levels up.
for root in (HERE, HERE.parent.parent):
    if (root / "streamchat").is_dir() and (root / "apps" / "chat.py").is_file():
        sys.path.insert(0, str(root))
        break
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from apps._shared import Kind, Providers, ProviderSettings, auth_from_env  # noqa: E402
from apps.chat import ChatConfig, build  # noqa: E402
from streamchat.gradio import Limits  # noqa: E402

env = os.environ
settings = ProviderSettings(
    base_url=env.get("OPENAI_BASE_URL") or None,
    model=env.get("OPENAI_MODEL") or None,
    api_key=env.get("OPENAI_API_KEY") or None,
    # A public Space must not fetch any URL a visitor types: only the configured server.
    allow_custom_url=env.get("STREAMCHAT_ALLOW_CUSTOM_URL") == "1",
)
limits = Limits(
    max_input_chars=int(env.get("STREAMCHAT_MAX_INPUT_CHARS", "4000")),
    max_requests=int(env.get("STREAMCHAT_RATE_LIMIT", "20")) or None,
    window_s=60.0,
)
provider: Kind = "openai" if settings.base_url and settings.model else "embedded"
concurrency = int(env.get("STREAMCHAT_CONCURRENCY", "16"))
demo = build(Providers(settings), ChatConfig(provider=provider, limits=limits, concurrency=concurrency))
demo.queue(default_concurrency_limit=concurrency)

if __name__ == "__main__":
    demo.launch(auth=auth_from_env(env), ssr_mode=False)
