"""streamchat in Jupyter: streamed display, a chat widget, ``%%chat``, latency tables and plots.

Needs the ``notebook`` extra; IPython, ipywidgets, pandas and matplotlib are
imported only when a function that uses them is called.
"""

from __future__ import annotations

from .display import DisplaySurface, Surface, ashow, show
from .magic import load_ipython_extension
from .plots import plot_gaps, plot_overview, plot_timeline, plot_tokens_per_s, plot_ttft
from .render import Snapshot
from .settings import choose_provider
from .tables import arrivals_table, summary_table, timings_table
from .widget import ChatWidget, Turn

__all__ = [
    "ChatWidget",
    "DisplaySurface",
    "Snapshot",
    "Surface",
    "Turn",
    "arrivals_table",
    "ashow",
    "choose_provider",
    "load_ipython_extension",
    "plot_gaps",
    "plot_overview",
    "plot_timeline",
    "plot_tokens_per_s",
    "plot_ttft",
    "show",
    "summary_table",
    "timings_table",
]
