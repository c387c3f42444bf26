"""The engine on an image column against the model's own ``encode`` on the same images.

Both sides start from the same encoded PNG files and decode them (Pillow, to RGB) before
the model sees them: the engine's digests, dedup, batching and scattering back are what
the ratio shows. The model is the tiny CLIP the tests build (no weights are downloaded
here), so decoding is most of the time and any overhead of the engine shows plainly;
a real CLIP model's forward pass would hide it.

Run: ``python -m pytest benchmarks/test_bench_images.py``; ``POLARS_EMBED_BENCH_IMAGES``
sets the number of images (1,000).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import polars_embed
from benchmarks.ratios import interleaved
from polars_embed.providers.sentence_transformers import SentenceTransformersProvider

pytest.importorskip("sentence_transformers")
Image = pytest.importorskip("PIL.Image")

ROUNDS = 5
IMAGES = int(os.environ.get("POLARS_EMBED_BENCH_IMAGES", "1000"))
SIDE = 64
GROUP = f"embed {IMAGES:,} distinct {SIDE}x{SIDE} PNG images, decoding included (tiny CLIP, CPU)"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SentenceTransformersProvider:
    from tests.clip_model import build_tiny_clip

    provider = SentenceTransformersProvider(
        model=str(build_tiny_clip(tmp_path_factory.mktemp("clip"))), device="cpu"
    )
    polars_embed.embed(["warm up the model"], provider, progress=False)
    return provider


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    generator = np.random.default_rng(0)
    encoded = []
    for _ in range(IMAGES):
        pixels = generator.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def decoded_and_encoded(clip: SentenceTransformersProvider, photos: list[bytes]) -> Callable[[], np.ndarray]:
    """What a user would write without polars-embed: decode every image, then ``encode``."""
    model, _ = clip._loaded()

    def decode_and_encode() -> np.ndarray:
        images = [Image.open(io.BytesIO(data)).convert("RGB") for data in photos]
        return model.encode(images, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)

    return decode_and_encode


def test_decode_and_encode(benchmark: Any, clip: SentenceTransformersProvider, photos: list[bytes]) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["reference"] = True
    vectors = benchmark.pedantic(decoded_and_encoded(clip, photos), rounds=ROUNDS, warmup_rounds=1)
    assert vectors.shape == (IMAGES, clip.dimension)


def test_engine_embed(benchmark: Any, clip: SentenceTransformersProvider, photos: list[bytes]) -> None:
    benchmark.group = GROUP
    vectors = interleaved(
        benchmark,
        lambda: polars_embed.embed(photos, clip),
        decoded_and_encoded(clip, photos),
        rounds=ROUNDS,
    )
    assert vectors.null_count() == 0 and len(vectors) == IMAGES


def test_polars_column(benchmark: Any, clip: SentenceTransformersProvider, photos: list[bytes]) -> None:
    benchmark.group = GROUP
    frame = pl.DataFrame({"photo": photos})
    expression = pl.col("photo").embed.images(clip).alias("vec")
    embedded = interleaved(
        benchmark, lambda: frame.with_columns(expression), decoded_and_encoded(clip, photos), rounds=ROUNDS
    )
    assert embedded["vec"].null_count() == 0


def test_path_column(
    benchmark: Any, clip: SentenceTransformersProvider, photos: list[bytes], tmp_path: Path
) -> None:
    """The same images as files under a root: reading them is the difference."""
    benchmark.group = GROUP
    for i, data in enumerate(photos):
        (tmp_path / f"{i}.png").write_bytes(data)
    paths = [f"{i}.png" for i in range(IMAGES)]
    images = polars_embed.Images(tmp_path)
    vectors = interleaved(
        benchmark,
        lambda: polars_embed.embed(paths, clip, images=images),
        decoded_and_encoded(clip, photos),
        rounds=ROUNDS,
    )
    assert vectors.null_count() == 0
