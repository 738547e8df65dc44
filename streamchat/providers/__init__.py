"""Providers: thin I/O shells that produce OpenAI-style chunk dicts."""
