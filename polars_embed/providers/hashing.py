"""``hashing``: deterministic embeddings with no model, by feature hashing.

Each text becomes counts of its hashed words, word pairs and character n-grams,
L2-normalised. Texts that share words or spellings land near each other; there
is no notion of meaning. It needs nothing but numpy, gives the same vectors in
every process and on every machine, and is fast: for tests, offline baselines
and examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from polars_embed.errors import ConfigError
from polars_embed.hookspecs import hookimpl
from polars_embed.provider import MAX_DIMENSION, Kind, Provider, is_reference, option

FEATURE_SETS = ("words", "chars", "words+chars")
#: The longest character n-gram, in bytes: each length is one pass over the batch.
MAX_NGRAM = 32

_BASE = np.uint64(0x100000001B3)  # FNV prime: any odd 64-bit multiplier spreads bytes well
_WORD_SEED = np.uint64(0x9E3779B97F4A7C15)
_PAIR_SEED = np.uint64(0xC2B2AE3D27D4EB4F)


@dataclass(frozen=True, kw_only=True, repr=False)
class HashingProvider(Provider):
    """Feature-hashing embedder.

    Options
    -------
    model
        Which features to hash: ``"words"`` (words and adjacent word pairs),
        ``"chars"`` (character n-grams) or ``"words+chars"`` (both, the default).
    dims
        Width of the vectors, from 1 to 65,536.
    min_n, max_n
        Lengths, in bytes, of the character n-grams: from 1 to 32, ``min_n <= max_n``.
    """

    name: ClassVar[str] = "hashing"
    cacheable: ClassVar[bool] = False  # recomputing is cheaper than a lookup

    model: str = option("words+chars", choices=FEATURE_SETS)
    dims: int = option(256, low=1, high=MAX_DIMENSION)
    min_n: int = option(3, low=1, high=MAX_NGRAM)
    max_n: int = option(5, low=1, high=MAX_NGRAM)
    batch_size: int = option(4096, runtime=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not any(map(is_reference, (self.model, self.dims, self.min_n, self.max_n))):
            self._settings()  # fail at construction when there is nothing left to resolve

    def _settings(self) -> tuple[str, int, int, int]:
        model, dims, min_n, max_n = (self.resolve(name) for name in ("model", "dims", "min_n", "max_n"))
        if min_n > max_n:
            raise ConfigError(f"hashing needs min_n <= max_n, got {min_n}, {max_n}")
        return model, dims, min_n, max_n

    @property
    def dimension(self) -> int:
        return self._settings()[1]

    @property
    def normalized(self) -> bool:
        return True

    def embed_batch(self, texts: list[str], *, kind: Kind) -> np.ndarray:
        # Spaces around each text mark word edges for the n-grams and keep words
        # from running across texts once the batch is one byte string.
        encoded = [f" {text.lower()} ".encode() for text in texts]
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
        row_of_byte = np.repeat(np.arange(len(texts)), [len(chunk) for chunk in encoded])

        model, dims, min_n, max_n = self._settings()
        rows, hashes = [], []
        if "chars" in model:
            for n in range(min_n, max_n + 1):
                start = np.arange(max(len(data) - n + 1, 0))
                inside = row_of_byte[start] == row_of_byte[start + n - 1]
                rows.append(row_of_byte[start[inside]])
                hashes.append(_mix(_ngram_hashes(data, n)[inside] ^ np.uint64(n)))
        if "words" in model:
            word_rows, word_hashes = _word_hashes(data, row_of_byte)
            same_text = word_rows[:-1] == word_rows[1:]
            pair_hashes = word_hashes[:-1][same_text] * _BASE + word_hashes[1:][same_text]
            rows += [word_rows, word_rows[:-1][same_text]]
            hashes += [_mix(word_hashes ^ _WORD_SEED), _mix(pair_hashes ^ _PAIR_SEED)]

        buckets = np.concatenate(rows) * dims + (np.concatenate(hashes) % np.uint64(dims))
        counts = np.bincount(buckets.astype(np.int64), minlength=len(texts) * dims)
        vectors = counts.reshape(len(texts), dims).astype(np.float32)
        # Counts are never negative, so a text with any feature has a non-zero norm.
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


def _ngram_hashes(data: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every run of ``n`` bytes (uint64 arithmetic wraps, as intended)."""
    count = max(len(data) - n + 1, 0)
    hashes = np.zeros(count, dtype=np.uint64)
    for offset in range(n if count else 0):
        hashes = hashes * _BASE + data[offset : offset + count]
    return hashes


def _word_hashes(data: np.ndarray, row_of_byte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The text and polynomial hash of every word (a run of letters, digits or non-ASCII)."""
    byte = data.astype(np.uint8)
    in_word = (((byte >= ord("a")) & (byte <= ord("z"))) | ((byte >= ord("0")) & (byte <= ord("9")))) | (
        byte >= 0x80
    )
    positions = np.flatnonzero(in_word)
    if len(positions) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
    starts_word = np.ones(len(positions), dtype=bool)
    starts_word[1:] = positions[1:] != positions[:-1] + 1
    word_starts = np.flatnonzero(starts_word)
    word_of_byte = np.cumsum(starts_word) - 1
    offset_in_word = np.arange(len(positions)) - word_starts[word_of_byte]
    lengths = np.diff(np.append(word_starts, len(positions)))
    # Horner's rule per word: byte k of a word of length L is weighted by BASE**(L-1-k).
    powers = np.ones(int(lengths.max()), dtype=np.uint64)
    powers[1:] = np.cumprod(np.full(len(powers) - 1, _BASE, dtype=np.uint64))
    weights = powers[lengths[word_of_byte] - 1 - offset_in_word]
    hashes = np.add.reduceat(data[positions] * weights, word_starts)
    return row_of_byte[positions[word_starts]], hashes


def _mix(hashes: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: spreads similar hashes over all buckets."""
    hashes = (hashes ^ (hashes >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    hashes = (hashes ^ (hashes >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return hashes ^ (hashes >> np.uint64(31))


@hookimpl
def polars_embed_providers() -> list[type[Provider]]:
    return [HashingProvider]
