"""Settings for every test, doctests included: no network for models, no progress bars."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("POLARS_EMBED_PROGRESS", "0")
