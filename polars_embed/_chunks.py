"""Long texts cut into chunks of at most so many tokens, by character offsets.

A chunk is a span ``[start, end)`` of its text, cut where a token starts: the first
chunk starts at 0, the last ends at the text's end, and without overlap each chunk
ends where the next starts, so the chunks put together are the text. Tokens are the
provider's own (:meth:`~polars_embed.Provider.token_spans`) where it has a tokenizer,
else the estimate of :func:`polars_embed._tokens.approximate_token_spans`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from polars_embed._tokens import approximate_token_spans
from polars_embed.errors import ConfigError
from polars_embed.provider import Kind, Provider

#: The type of a column of chunks: one list per row, each chunk its text and offsets.
CHUNK_DTYPE = pl.List(pl.Struct({"text": pl.String, "start": pl.UInt32, "end": pl.UInt32}))


def token_spans(texts: Sequence[str], provider: Provider | None) -> list[np.ndarray]:
    """Each text's tokens as an ``(m, 2)`` array of character offsets, by the provider's
    tokenizer where it has one, else by the estimate."""
    spans = provider.token_spans(texts) if provider is not None else None
    return spans if spans is not None else approximate_token_spans(texts)


def chunk_budget(provider: Provider | None, kind: Kind, max_tokens: int | None) -> int:
    """Tokens of text per chunk: ``max_tokens``, else what the provider's model reads
    (or the service takes) less the tokens it adds to every text (prompt, special tokens)."""
    if max_tokens is None and provider is not None:
        limit = provider.max_input_tokens or provider.max_text_tokens
        if limit:
            overhead = (provider.count_tokens([""], kind=kind) or [0])[0]
            max_tokens = limit - overhead
    if max_tokens is None:
        label = f"{provider.label} reads texts of any length" if provider else "no provider was given"
        raise ConfigError(f"{label}, so the chunk size is not known: pass max_tokens=<tokens per chunk>")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a whole number of tokens, 1 or more; got {max_tokens!r}")
    return max_tokens


def chunk_offsets(spans: np.ndarray, length: int, max_tokens: int, overlap: int = 0) -> np.ndarray:
    """``(c, 2)`` character offsets of the chunks of a text of ``length`` characters
    whose tokens are at ``spans``; one chunk for a text of no tokens but some characters.

    A chunk ends before the token that would pass ``max_tokens``, moved back to the
    start of its word (a token with a space before it) unless the chunk is one word;
    with ``overlap``, the next chunk starts that many tokens earlier, at a word start too.
    """
    tokens = len(spans)
    if tokens <= max_tokens:
        return np.array([[0, length]] if length else [], dtype=np.int64).reshape(-1, 2)
    word_starts = np.flatnonzero(np.concatenate([[True], spans[1:, 0] > spans[:-1, 1]]))

    def back_to_word(token: int, after: int) -> int:
        """The last word start in ``(after, token]``, else ``token``."""
        at = int(np.searchsorted(word_starts, token, side="right")) - 1
        return int(word_starts[at]) if at >= 0 and word_starts[at] > after else token

    bounds: list[tuple[int, int]] = []
    first = 0
    while first + max_tokens < tokens:
        end = back_to_word(first + max_tokens, first)
        bounds.append((first, end))
        first = end if end - overlap <= first else back_to_word(end - overlap, first)
    bounds.append((first, tokens))
    firsts, ends = np.array(bounds, dtype=np.int64).T
    starts = spans[firsts, 0]
    starts[0] = 0
    return np.stack([starts, np.where(ends < tokens, spans[np.minimum(ends, tokens - 1), 0], length)], axis=1)


def check_overlap(overlap: int, max_tokens: int) -> None:
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < max_tokens:
        raise ConfigError(
            f"overlap must be a whole number of tokens from 0 to max_tokens - 1 ({max_tokens - 1}), "
            f"got {overlap!r}"
        )


def chunk_texts(
    texts: Sequence[str], provider: Provider | None, max_tokens: int, overlap: int = 0
) -> list[np.ndarray]:
    """The chunk offsets of every text, as :func:`chunk_offsets` gives them."""
    return [
        chunk_offsets(spans, len(text), max_tokens, overlap)
        for text, spans in zip(texts, token_spans(texts, provider), strict=True)
    ]


def chunks_column(texts: pl.Series, provider: Provider | None, max_tokens: int, overlap: int) -> pl.Series:
    """A String Series as :data:`CHUNK_DTYPE`: null for a null text, no chunk for a blank one."""
    present = texts.is_not_null() & (texts.str.strip_chars() != "")
    kept = texts.filter(present).to_list()
    offsets = chunk_texts(kept, provider, max_tokens, overlap)
    per_row = np.zeros(len(texts), dtype=np.int64)
    per_row[present.to_numpy()] = [len(chunks) for chunks in offsets]
    flat = np.concatenate(offsets) if offsets else np.empty((0, 2), dtype=np.int64)
    pieces = [
        text[start:end] for text, chunks in zip(kept, offsets, strict=True) for start, end in chunks.tolist()
    ]
    values = pa.StructArray.from_arrays(
        [
            pa.array(pieces, pa.large_string()),
            pa.array(flat[:, 0], pa.uint32()),
            pa.array(flat[:, 1], pa.uint32()),
        ],
        names=["text", "start", "end"],
    )
    boundaries = pa.array(np.concatenate([[0], np.cumsum(per_row)]), pa.int32())
    lists = pa.ListArray.from_arrays(boundaries, values, mask=pa.array(texts.is_null().to_numpy()))
    return pl.Series(texts.name, lists).cast(CHUNK_DTYPE)
