"""Token counts when nobody better counts them: tiktoken's cl100k_base if it loads, else bytes / 3.

cl100k_base is the encoding of OpenAI's embedding models. Without it a text counts as
one token per three UTF-8 bytes, rounded up: more than the true count for English, code
and most European text (about four bytes a token), so a budget or a request limit
checked against it errs on the safe side; for some scripts it can fall short.

Where tokens are cut into chunks and the provider has no tokenizer of its own, a text's
tokens are estimated by :func:`approximate_token_spans`: each word (a run of non-space
characters) with the spaces after it is as many tokens as its UTF-8 bytes / 3, rounded up
(at most one per character of the word), cut evenly over the word's characters. So a
chunk counts at least as many tokens as :func:`approximate_tokens` gives its text
without tiktoken, and fits a service's limit checked that way.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Without tiktoken, a text counts as one token per this many UTF-8 bytes, rounded up.
BYTES_PER_TOKEN = 3

_WORD = re.compile(r"(\S+)\s*")


@functools.cache
def tiktoken_encoding() -> Any | None:
    """tiktoken's cl100k_base, if it loads here (its file is fetched once, then cached)."""
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base")
    except Exception as error:  # not installed, or its file cannot be fetched: estimate instead
        log.debug("token counts are estimated: tiktoken's cl100k_base did not load (%s)", error)
        return None


def approximate_tokens(texts: Sequence[str]) -> list[int]:
    """Tokens per text: tiktoken's count when it loads, else UTF-8 bytes / 3 rounded up."""
    encoding = tiktoken_encoding()
    if encoding is None:
        return [math.ceil(len(text.encode()) / BYTES_PER_TOKEN) for text in texts]
    return [len(tokens) for tokens in encoding.encode_ordinary_batch(list(texts))]


def approximate_token_counter() -> str:
    """What :func:`approximate_tokens` counts with, in words."""
    if tiktoken_encoding() is not None:
        return "tiktoken cl100k_base"
    return "UTF-8 bytes / 3, tiktoken not loaded"


def approximate_token_spans(texts: Sequence[str]) -> list[np.ndarray]:
    """Each text's estimated tokens as an ``(m, 2)`` array of character offsets: a word
    and the spaces after it, of b UTF-8 bytes, is ceil(b / 3) tokens (at most one a
    character of the word), cut evenly over the word."""
    result = []
    for text in texts:
        spans: list[tuple[int, int]] = []
        for word in _WORD.finditer(text):
            start, end = word.span(1)
            pieces = min(math.ceil(len(word[0].encode()) / BYTES_PER_TOKEN), end - start)
            if pieces == 1:
                spans.append((start, end))
                continue
            cuts = [start + (end - start) * i // pieces for i in range(pieces + 1)]
            spans.extend(itertools.pairwise(cuts))
        result.append(np.array(spans, dtype=np.int64).reshape(-1, 2))
    return result
