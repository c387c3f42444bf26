"""Hybrid search: BM25 keyword ranking fused with the vector ranking, on frames and DuckDB tables."""

from __future__ import annotations

import numpy as np
import pytest

from polars_embed import ConfigError
from polars_embed.keywords import KeywordIndex, check_fusion, fuse

pytest.importorskip("bm25s")

LOGIN = [
    "Login fails with an error after the password is entered",
    "Error on login: the page reloads and nothing happens",
    "Users report a login error when the session expires",
    "The login form shows a generic error message",
    "Login error for accounts with two-factor authentication",
    "An error appears on login from the mobile app",
    "Login is refused with an unknown error",
    "Error messages during login are not translated",
    "After the update every login ends in an error",
    "Login error when the username contains spaces",
    "The error on login disappears after clearing cookies",
    "Single sign-on login returns an error page",
]
OTHER = [
    "Refund not received after cancelling the order",
    "How do I change my delivery address",
    None,
    "The invoice total is wrong",
    "Shipping takes longer than promised",
    "Discount code is not accepted at checkout",
    "The app crashes when uploading a photo",
]
#: The one text that names the identifier the query asks about, in other words than the query's.
TARGET = "Firmware 2.3 writes code E1234 to the terminal log when the card reader times out"
CORPUS = [*LOGIN, *OTHER, TARGET]
QUERY = "error E1234 on login"


class TestFusion:
    VECTOR = (np.array([3, 1, 2]), np.array([0.9, 0.8, 0.1], dtype=np.float32))
    KEYWORD = (np.array([2, 5]), np.array([7.5, 2.5], dtype=np.float32))

    def test_reciprocal_rank_fusion_by_hand(self) -> None:
        fused = fuse(self.VECTOR, self.KEYWORD)
        by_hand = {3: 1 / 61, 1: 1 / 62, 2: 1 / 63 + 1 / 61, 5: 1 / 62}
        assert fused.rows.tolist() == [2, 3, 1, 5]  # 1 and 5 tie: the lower row first
        np.testing.assert_allclose(fused.scores, [by_hand[row] for row in fused.rows.tolist()], rtol=1e-6)
        assert fused.vector_ranks.tolist() == [3, 1, 2, 0]
        assert fused.keyword_ranks.tolist() == [1, 0, 0, 2]

    def test_weighted_fusion_by_hand(self) -> None:
        fused = fuse(self.VECTOR, self.KEYWORD, fusion="weighted", weight=0.7)
        # vector scores scaled over (0.1, 0.9), keyword scores over (2.5, 7.5)
        by_hand = {3: 0.7 * 1.0, 1: 0.7 * 0.875, 2: 0.3 * 1.0, 5: 0.0}
        assert fused.rows.tolist() == [3, 1, 2, 5]
        np.testing.assert_allclose(fused.scores, [by_hand[row] for row in fused.rows.tolist()], atol=1e-6)

    def test_weighted_fusion_of_distances_puts_the_nearest_first(self) -> None:
        distances = (np.array([3, 1, 2]), np.array([0.1, 0.2, 0.9], dtype=np.float32))
        fused = fuse(
            distances,
            (np.array([], dtype=np.int64), np.array([], dtype=np.float32)),
            fusion="weighted",
            weight=1.0,
            higher_is_better=False,
        )
        assert fused.rows.tolist() == [3, 1, 2]
        np.testing.assert_allclose(fused.scores, [1.0, 0.875, 0.0], atol=1e-6)

    def test_rank_columns_are_null_where_a_row_is_not_ranked(self) -> None:
        vector_rank, keyword_rank = fuse(self.VECTOR, self.KEYWORD).rank_columns("v", "kw")
        assert vector_rank.to_list() == [3, 1, 2, None]
        assert keyword_rank.to_list() == [1, None, None, 2]

    @pytest.mark.parametrize(
        ("fusion", "weight", "message"),
        [("mean", 0.5, "fusion must be one of"), ("weighted", 1.5, r"must be in \[0, 1\]")],
    )
    def test_bad_options_are_refused(self, fusion: str, weight: float, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            check_fusion(fusion, weight)


class TestKeywordIndex:
    def test_an_identifier_ranks_first_and_nulls_never_match(self) -> None:
        index = KeywordIndex(CORPUS)
        rows, scores = index.ranking(QUERY, depth=100)
        assert rows[0] == CORPUS.index(TARGET)
        assert CORPUS.index(None) not in rows.tolist()
        assert set(rows.tolist()) == {
            i
            for i, text in enumerate(CORPUS)
            if text and ("login" in text.lower() or "error" in text.lower() or "E1234" in text)
        }
        assert (np.diff(scores) <= 0).all()

    def test_a_query_of_unknown_words_matches_nothing(self) -> None:
        rows, scores = KeywordIndex(CORPUS).ranking("zzz qqq", depth=10)
        assert rows.tolist() == [] and scores.tolist() == []
