"""Semantic dedup (k-nearest self-join + connected components) and matching across frames."""

from __future__ import annotations

from collections import deque

import numpy as np
import polars as pl
import pytest

import polars_embed  # noqa: F401  (registers .embed)
from polars_embed import ConfigError, DuplicateColumnError
from polars_embed.namespaces._dedup import connected_components

WIDTH = 64


def clustered_vectors(groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Groups of 1 to 6 noisy copies of random directions, shuffled, and each row's group."""
    generator = np.random.default_rng(seed)
    centres = generator.standard_normal((groups, WIDTH)).astype(np.float32)
    sizes = generator.integers(1, 7, size=groups)
    truth = np.repeat(np.arange(groups), sizes)
    noise = generator.standard_normal((len(truth), WIDTH)).astype(np.float32) * 0.08
    vectors = centres[truth] + noise * np.linalg.norm(centres[truth], axis=1, keepdims=True) / np.sqrt(WIDTH)
    order = generator.permutation(len(truth))
    return vectors[order].astype(np.float32), truth[order]


def brute_force_groups(vectors: np.ndarray, threshold: float) -> list[int | None]:
    """Every pair at or above the threshold linked, components by breadth-first search,
    numbered in order of first appearance; None for rows that cannot match."""
    norms = np.linalg.norm(vectors, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    unit = np.where(ok[:, None], vectors / np.where(ok, norms, 1)[:, None], 0)
    linked = (unit @ unit.T >= np.float32(threshold)) & ok[:, None] & ok[None, :]
    labels: list[int | None] = [None] * len(vectors)
    next_label = 0
    for start in range(len(vectors)):
        if not ok[start] or labels[start] is not None:
            continue
        labels[start] = next_label
        queue = deque([start])
        while queue:
            row = queue.popleft()
            for other in np.flatnonzero(linked[row]).tolist():
                if labels[other] is None:
                    labels[other] = next_label
                    queue.append(other)
        next_label += 1
    return labels


def vector_frame(vectors: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {"id": np.arange(len(vectors)), "vec": vectors}, schema_overrides={"vec": pl.Array(pl.Float32, WIDTH)}
    )


def test_connected_components_agree_with_a_search_of_the_graph() -> None:
    generator = np.random.default_rng(3)
    n = 500
    sources, targets = generator.integers(0, n, size=(2, 300))
    labels = connected_components(n, sources, targets)
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in zip(sources.tolist(), targets.tolist(), strict=True):
        neighbours[a].add(b)
        neighbours[b].add(a)
    for node in range(n):
        seen, queue = {node}, deque([node])
        while queue:
            for other in neighbours[queue.popleft()] - seen:
                seen.add(other)
                queue.append(other)
        assert labels[node] == min(seen)


@pytest.mark.parametrize("threshold", [0.9, 0.97])
def test_dedup_equals_the_brute_force_reference(threshold: float) -> None:
    vectors, _ = clustered_vectors(900)
    assert len(vectors) > 2500
    vectors[[10, 500]] = np.nan  # null rows
    vectors[20] = 0  # a zero vector matches nothing
    frame = vector_frame(vectors).with_columns(
        pl.when(pl.col("id").is_in([10, 500])).then(None).otherwise(pl.col("vec")).alias("vec")
    )
    got = frame.embed.dedup(on="vec", threshold=threshold)
    assert got.columns == ["id", "vec", "cluster_id"] and got["cluster_id"].dtype == pl.UInt32
    assert got["cluster_id"].to_list() == brute_force_groups(vectors, threshold)
    # the same in pieces (a chunked frame), and lazily
    pieces = pl.concat([frame[:1000], frame[1000:1700], frame[1700:]], rechunk=False)
    assert pieces["vec"].n_chunks() == 3
    assert pieces.embed.dedup(on="vec", threshold=threshold)["cluster_id"].equals(got["cluster_id"])
    lazy = frame.lazy().embed.dedup(on="vec", threshold=threshold)
    assert lazy.collect()["cluster_id"].equals(got["cluster_id"])


def test_the_groups_found_are_the_planted_ones() -> None:
    vectors, truth = clustered_vectors(300, seed=5)
    ids = vector_frame(vectors).embed.dedup(on="vec", threshold=0.9)["cluster_id"].to_numpy()
    pairs = {(int(a), int(b)) for a, b in zip(ids, truth, strict=True)}
    assert len(pairs) == len(set(ids.tolist())) == len(set(truth.tolist()))  # one to one


def test_a_group_larger_than_k_is_found_whole() -> None:
    generator = np.random.default_rng(1)
    centre = generator.standard_normal(WIDTH)
    copies = centre + generator.standard_normal((40, WIDTH)) * 0.01
    others = generator.standard_normal((60, WIDTH))
    frame = vector_frame(np.concatenate([copies, others]).astype(np.float32))
    ids = frame.embed.dedup(on="vec", threshold=0.95, k=3)["cluster_id"].to_list()
    assert set(ids[:40]) == {0} and len(set(ids[40:])) == 60


def test_dedup_options() -> None:
    frame = vector_frame(np.eye(3, WIDTH, dtype=np.float32))
    with pytest.raises(ConfigError, match="threshold must be a cosine similarity from -1 to 1"):
        frame.embed.dedup(on="vec", threshold=1.5)
    with pytest.raises(DuplicateColumnError):
        frame.embed.dedup(on="vec", name="id")
    with pytest.raises(ConfigError, match="k must be"):
        frame.embed.dedup(on="vec", k=0)
    assert frame.clear().embed.dedup(on="vec")["cluster_id"].to_list() == []


def test_match_pairs_records_above_the_threshold() -> None:
    vectors, truth = clustered_vectors(400, seed=7)
    frame = vector_frame(vectors).with_columns(group=pl.Series(truth))
    left, right = frame[::2], frame[1::2]
    pairs = left.embed.match(right, on="vec", threshold=0.9, k=3)
    assert pairs.columns == ["id", "vec", "group", "id_right", "vec_right", "group_right", "similarity"]
    assert (pairs["group"] == pairs["group_right"]).all() and (pairs["similarity"] >= 0.9).all()
    # every pair the brute force finds among each left row's 3 nearest (more than 3: the 3 best)
    a, b = left["vec"].to_numpy(), right["vec"].to_numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    scores = a @ b.T
    expected = {
        (int(left["id"][i]), int(right["id"][int(j)]))
        for i in range(len(a))
        for j in np.argsort(-scores[i], kind="stable")[:3]
        if scores[i, j] >= np.float32(0.9)
    }
    assert set(zip(pairs["id"].to_list(), pairs["id_right"].to_list(), strict=True)) == expected
    lazy = left.lazy().embed.match(right.lazy(), on="vec", threshold=0.9, k=3).collect()
    assert lazy.equals(pairs)
