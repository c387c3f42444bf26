"""Semantic dedup of 100,000 x 384 against a blocked numpy self-join at the same threshold.

The reference is what one writes by hand: the unit vectors multiplied block by block
against all of them, every pair at or above the threshold taken with ``np.nonzero``,
and the same connected components. ``df.embed.dedup`` instead asks the kernels for
each row's k nearest rows. Both give the same groups here (asserted).

The data: 100,000 unit vectors, a third of them noisy copies (cosine about 0.97) of
others, the rest unrelated random directions.

Run: ``python -m pytest benchmarks/test_bench_dedup.py``; a smoke run shrinks it with
``POLARS_EMBED_BENCH_DEDUP_N=5000`` (rounds: ``POLARS_EMBED_BENCH_DEDUP_ROUNDS``, 2, after
``POLARS_EMBED_BENCH_DEDUP_WARMUP`` warm-up rounds, 1).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import polars as pl
import pytest

import polars_embed  # noqa: F401  (registers .embed)
from benchmarks.ratios import interleaved
from polars_embed.kernels import l2_normalize
from polars_embed.namespaces._dedup import connected_components

ROWS = int(os.environ.get("POLARS_EMBED_BENCH_DEDUP_N", "100000"))
ROUNDS = int(os.environ.get("POLARS_EMBED_BENCH_DEDUP_ROUNDS", "2"))
WARMUP = int(os.environ.get("POLARS_EMBED_BENCH_DEDUP_WARMUP", "1"))
WIDTH = 384
THRESHOLD = 0.92
BLOCK = 2048

pytestmark = pytest.mark.timeout(7200)  # each run takes minutes on two cores


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    generator = np.random.default_rng(0)
    originals = ROWS - ROWS // 3
    base = l2_normalize(generator.standard_normal((originals, WIDTH), dtype=np.float32))
    copied = generator.integers(0, originals, size=ROWS - originals)
    noise = generator.standard_normal((len(copied), WIDTH), dtype=np.float32) * np.float32(
        0.25 / np.sqrt(WIDTH)
    )
    rows = np.concatenate([base, l2_normalize(base[copied] + noise)])
    return np.ascontiguousarray(rows[generator.permutation(ROWS)])


def numpy_self_join(vectors: np.ndarray) -> np.ndarray:
    """Blocked ``X[block] @ X.T``, pairs at or above the threshold, their components."""
    sources, targets = [], []
    for start in range(0, len(vectors), BLOCK):
        rows, columns = np.nonzero(vectors[start : start + BLOCK] @ vectors.T >= np.float32(THRESHOLD))
        sources.append(rows + start)
        targets.append(columns)
    return connected_components(len(vectors), np.concatenate(sources), np.concatenate(targets))


@pytest.mark.benchmark(group=f"dedup: {ROWS} x {WIDTH}, threshold {THRESHOLD}")
def test_dedup_vs_numpy_self_join(benchmark: Any, vectors: np.ndarray) -> None:
    frame = pl.DataFrame({"vec": vectors}, schema={"vec": pl.Array(pl.Float32, WIDTH)})
    reference: list[np.ndarray] = []
    deduped = interleaved(
        benchmark,
        lambda: frame.embed.dedup(on="vec", threshold=THRESHOLD, normalized=True),
        lambda: reference.append(numpy_self_join(vectors)),
        rounds=ROUNDS,
        warmup_rounds=WARMUP,
    )
    expected = np.unique(reference[-1], return_inverse=True)[1]
    np.testing.assert_array_equal(deduped["cluster_id"].to_numpy(), expected)
    benchmark.extra_info["groups"] = int(expected.max()) + 1
