"""Collection settings for the whole repository (tests, doctests and benchmarks)."""

from __future__ import annotations

import importlib.util

# polars_embed.ray needs the optional `ray` extra; its doctests are collected only where it is installed.
collect_ignore = [] if importlib.util.find_spec("ray") else ["polars_embed/ray.py"]
