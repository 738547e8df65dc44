"""Fault drills: a proxy that breaks OpenAI-compatible streams on purpose."""

from __future__ import annotations

from .spec import FaultSpec, Injector, Schedule, parse

__all__ = ["FaultSpec", "Injector", "Schedule", "parse"]
