"""The model-free hashing provider."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import polars_embed
from polars_embed import ConfigError


def vectors(texts: list[str], **options: object) -> np.ndarray:
    return polars_embed.embed(texts, "hashing", **options).to_numpy()


def test_unit_length_float32_of_the_configured_width() -> None:
    result = vectors(["hello world", "x", "ünïcødé 日本語", "!!!"], dims=64)
    assert result.shape == (4, 64) and result.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, rtol=1e-6)


def test_texts_shorter_than_the_longest_ngram() -> None:
    for batch in (["a"], ["a", "b"], ["é"]):
        result = vectors(batch)
        np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1.0, rtol=1e-6)


def test_the_same_in_every_process() -> None:
    script = (
        "import polars_embed; print(polars_embed.embed(['the same in every process'], 'hashing').to_list())"
    )
    runs = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(runs) == 1
    assert runs.pop().strip() == str(polars_embed.embed(["the same in every process"], "hashing").to_list())


def test_a_text_does_not_depend_on_its_batch() -> None:
    alone = vectors(["a text in a batch"])
    together = vectors(["first", "a text in a batch", "another one entirely"], batch_size=2)
    np.testing.assert_array_equal(alone[0], together[1])


def test_shared_words_and_spellings_bring_texts_closer() -> None:
    query, near, far = vectors(
        ["parsing dates in polars", "how to parse dates with polars", "quarterly revenue grew"]
    )
    assert query @ near > query @ far + 0.2
    colour, color, banana = (
        vectors(["colour"], model="chars")[0],
        vectors(["color"], model="chars")[0],
        vectors(["banana"], model="chars")[0],
    )
    assert colour @ color > colour @ banana


def test_word_order_matters_only_through_word_pairs() -> None:
    words_only = vectors(["dog bites man", "man bites dog"], model="words")
    assert 0.3 < float(words_only[0] @ words_only[1]) < 0.99


@pytest.mark.parametrize("options", [{"model": "bigrams"}, {"dims": 0}, {"min_n": 4, "max_n": 3}])
def test_bad_options(options: dict) -> None:
    with pytest.raises(ConfigError, match="hashing"):
        polars_embed.resolve_provider("hashing", **options)
