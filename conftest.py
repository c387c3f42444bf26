"""Settings for every test, doctests included: no network for models, no progress bars, no cache;
and polars_embed.ray's doctests only where the optional `ray` extra is installed."""

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("POLARS_EMBED_PROGRESS", "0")
# Tests that exercise the embedding cache turn it on, each with a file of its own.
os.environ["POLARS_EMBED_CACHE"] = "0"

collect_ignore = [] if importlib.util.find_spec("ray") else ["polars_embed/ray.py"]
