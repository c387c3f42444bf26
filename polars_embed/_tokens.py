"""Token counts when nobody better counts them: tiktoken's cl100k_base if it loads, else bytes / 3.

cl100k_base is the encoding of OpenAI's embedding models. Without it a text counts as
one token per three UTF-8 bytes, rounded up: more than the true count for English, code
and most European text (about four bytes a token), so a budget or a request limit
checked against it errs on the safe side; for some scripts it can fall short.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

#: Without tiktoken, a text counts as one token per this many UTF-8 bytes, rounded up.
BYTES_PER_TOKEN = 3


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
