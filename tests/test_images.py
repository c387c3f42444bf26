"""Images: Binary and path columns through the engine, a tiny CLIP model, text finds images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

import duckdb_ext
import polars_embed
from polars_embed import (
    CallableProvider,
    ConfigError,
    Images,
    InputTypeError,
    InvalidImageError,
    InvalidInputError,
)
from polars_embed._inputs import prepare
from polars_embed.providers import sentence_transformers as st_provider
from polars_embed.providers.sentence_transformers import SentenceTransformersProvider
from tests.clip_model import COLOURS, PROJECTION, build_tiny_clip, encoded

PIL = pytest.importorskip("PIL.Image")
ENGINES = ["in-memory", "streaming"]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sentence_transformers")
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def clip(tiny_clip: Path) -> SentenceTransformersProvider:
    return SentenceTransformersProvider(model=str(tiny_clip), device="cpu")


class Sizes:
    """An image function that records the size of every image it is given (its mean colour
    is its vector), as a provider an image model plugs in through."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.batches: list[int] = []

    def __call__(self, images: list[Any]) -> np.ndarray:
        self.seen += [image.size for image in images]
        self.batches.append(len(images))
        return np.stack([np.asarray(image, dtype=np.float32).mean(axis=(0, 1)) + 1 for image in images])


@pytest.fixture
def sizes() -> Sizes:
    return Sizes()


def images_of(function: Sizes) -> CallableProvider:
    return CallableProvider(function=function, dims=3, images=True)


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    import io

    buffer = io.BytesIO()
    PIL.fromarray(noise).save(buffer, format="JPEG")
    whole = buffer.getvalue()
    return whole[: len(whole) // 2]


class TestTheTinyClipModel:
    def test_its_width_and_input_kinds_come_from_its_files_without_loading_it(
        self, clip: SentenceTransformersProvider, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(st_provider, "_models", {})
        import sentence_transformers

        monkeypatch.setattr(sentence_transformers, "SentenceTransformer", None)  # loading would fail
        assert clip.dimension == PROJECTION
        assert clip.input_kinds == ("text", "image")
        expression = pl.col("photo").embed.images(clip)
        schema = pl.LazyFrame({"photo": [b""]}).select(expression).collect_schema()
        assert schema["photo"] == pl.Array(pl.Float32, PROJECTION)

    def test_the_legacy_clip_layout_is_read_too(self, tmp_path: Path) -> None:
        # As clip-ViT-B-32 is saved on the hub: one CLIPModel module in a folder of its own.
        module = tmp_path / "0_CLIPModel"
        module.mkdir()
        modules = [
            {"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}
        ]
        (tmp_path / "modules.json").write_text(json.dumps(modules))
        (module / "config.json").write_text(json.dumps({"model_type": "clip", "projection_dim": 512}))
        provider = SentenceTransformersProvider(model=str(tmp_path))
        assert provider.dimension == 512 and provider.input_kinds == ("text", "image")

    def test_a_text_model_embeds_text_only(self, tmp_path: Path) -> None:
        (tmp_path / "modules.json").write_text(
            json.dumps(
                [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
            )
        )
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
        assert SentenceTransformersProvider(model=str(tmp_path)).input_kinds == ("text",)

    @pytest.mark.parametrize("engine_name", ENGINES)
    def test_a_text_query_finds_the_image_of_its_colour(
        self, clip: SentenceTransformersProvider, engine_name: str
    ) -> None:
        photos = [encoded("blue"), None, encoded("red", (40, 30), "JPEG"), encoded("green")]
        frame = pl.LazyFrame({"sku": ["b", "none", "r", "g"], "photo": photos})
        with pl.Config(streaming_chunk_size=2):
            df = frame.with_columns(vec=pl.col("photo").embed.images(clip)).collect(engine=engine_name)
        assert df["vec"].dtype == pl.Array(pl.Float32, PROJECTION)
        assert df["vec"].is_null().to_list() == [False, True, False, False]
        for colour in COLOURS:
            hits = df.embed.search(colour, on="vec", k=1, provider=clip)
            assert hits["sku"].to_list() == [colour[0]]
            assert hits["score"][0] == pytest.approx(1.0, abs=0.02)

    def test_images_are_documents_and_texts_queries_in_one_space(
        self, clip: SentenceTransformersProvider
    ) -> None:
        images = polars_embed.embed([encoded(colour) for colour in COLOURS], clip).to_numpy()
        texts = polars_embed.embed(list(COLOURS), clip, kind="query").to_numpy()
        np.testing.assert_allclose(texts @ images.T, np.eye(3), atol=0.02)

    def test_a_binary_column_embeds_as_images_with_with_provider(
        self, clip: SentenceTransformersProvider
    ) -> None:
        df = pl.DataFrame({"photo": [encoded("green"), None]})
        vectors = df.select(pl.col("photo").embed.with_provider(clip))["photo"]
        expected = polars_embed.embed([encoded("green")], clip).to_numpy()
        np.testing.assert_allclose(vectors.to_numpy()[0], expected[0], atol=1e-5)
        assert vectors[1] is None

    def test_identical_images_reach_the_model_once(
        self, clip: SentenceTransformersProvider, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sent: list[int] = []
        embed_batch = SentenceTransformersProvider.embed_batch

        def counted(self: SentenceTransformersProvider, texts: list[Any], *, kind: str) -> np.ndarray:
            sent.append(len(texts))
            return embed_batch(self, texts, kind=kind)

        monkeypatch.setattr(SentenceTransformersProvider, "embed_batch", counted)
        photos = [encoded("red"), encoded("blue"), encoded("red"), None, encoded("red")]
        vectors = polars_embed.embed(photos, clip).to_numpy()
        assert sum(sent) == 2
        stats = polars_embed.last_stats()
        assert (stats.rows, stats.skipped, stats.distinct, stats.embedded) == (5, 1, 2, 2)
        np.testing.assert_array_equal(vectors[0], vectors[2])

    def test_the_cache_keys_images_by_content_and_serves_a_second_run(
        self, clip: SentenceTransformersProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from polars_embed import cache

        monkeypatch.setattr(cache, "_overrides", {})
        monkeypatch.setenv("POLARS_EMBED_CACHE", "1")
        monkeypatch.setenv("POLARS_EMBED_CACHE_DIR", str(tmp_path))
        folder = tmp_path / "photos"
        folder.mkdir()
        (folder / "red.png").write_bytes(encoded("red"))
        first = polars_embed.embed([encoded("red"), encoded("blue")], clip)
        assert polars_embed.last_stats().embedded == 2
        # The same red image by path is the same key: found in the cache.
        again = polars_embed.embed(["red.png", None], clip, images=Images(folder))
        stats = polars_embed.last_stats()
        assert (stats.cache_hits, stats.embedded) == (1, 0)
        np.testing.assert_array_equal(again.to_numpy()[0], first.to_numpy()[0])
        # A text that reads like an image's key is not that image.
        digest = prepare(pl.Series([encoded("red")]), None).keys[0]
        polars_embed.embed([digest], clip)
        assert polars_embed.last_stats().embedded == 1


class TestImageColumns:
    def test_nulls_give_null_vectors_and_images_reach_the_function_as_rgb(self, sizes: Sizes) -> None:
        photos = [encoded((10, 20, 30)), None, encoded((0, 0, 0), fmt="BMP"), encoded("white", fmt="WEBP")]
        vectors = polars_embed.embed(photos, images_of(sizes))
        assert vectors.is_null().to_list() == [False, True, False, False]
        np.testing.assert_allclose(vectors.to_numpy()[0], [11, 21, 31])
        assert sizes.seen == [(24, 24)] * 3

    def test_a_huge_image_is_downscaled_before_the_model(self, sizes: Sizes) -> None:
        polars_embed.embed(
            [encoded("red", (3000, 1500), "JPEG"), encoded("red", (2000, 2500))], images_of(sizes)
        )
        assert sorted(sizes.seen) == [(819, 1024), (1024, 512)]

    @pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, then ours
    def test_a_decompression_bomb_is_refused(self, sizes: Sizes, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 100 * 100)
        for size in ((120, 100), (300, 300)):  # over the limit, and past Pillow's own refusal at twice it
            with pytest.raises(InvalidImageError, match=r"row 1 of .*MAX_IMAGE_PIXELS \(10000\) allows"):
                polars_embed.embed([encoded("red", (50, 50)), encoded("red", size)], images_of(sizes))
        assert sizes.seen == []

    @pytest.mark.parametrize(
        ("broken", "cause"),
        [
            (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a format it knows"),
            (encoded("red")[:60], "image file is truncated"),
            (truncated_jpeg(), "image file is truncated"),
            (b"", "not a format it knows"),
        ],
        ids=["corrupt-png", "truncated-png", "truncated-jpeg", "empty"],
    )
    def test_an_unreadable_image_is_an_error_naming_its_row(
        self, sizes: Sizes, broken: bytes, cause: str
    ) -> None:
        frame = pl.DataFrame({"photo": [encoded("red"), None, broken]})
        with pytest.raises(
            InvalidImageError, match=rf"row 2 of 'photo' cannot be read as an image \(({cause})"
        ):
            frame.select(pl.col("photo").embed.images(images_of(sizes)))

    def test_the_error_survives_polars_as_its_class(self, sizes: Sizes) -> None:
        frame = pl.LazyFrame({"photo": [b"not an image"]})
        with pytest.raises(InvalidImageError) as raised:
            frame.select(pl.col("photo").embed.images(images_of(sizes))).collect(engine="streaming")
        assert isinstance(raised.value, InvalidInputError) and isinstance(raised.value, ValueError)
        assert "drop that row" in str(raised.value)

    def test_a_format_outside_the_list_is_refused(self, sizes: Sizes) -> None:
        with pytest.raises(InvalidImageError, match="reads PNG, JPEG, WEBP, GIF, BMP, TIFF"):
            polars_embed.embed([encoded("red", fmt="ICO")], images_of(sizes))

    def test_a_text_provider_refuses_images_and_says_what_it_takes(self, sizes: Sizes) -> None:
        with pytest.raises(
            InputTypeError, match=r"hashing:words\+chars embeds text only, but it was given images"
        ):
            pl.col("photo").embed.images("hashing")
        frame = pl.DataFrame({"photo": [encoded("red")]})
        with pytest.raises(InputTypeError, match="embeds text only, but column 'photo' holds images; use a"):
            frame.select(pl.col("photo").embed.with_provider("hashing"))
        with pytest.raises(InputTypeError, match="embeds text only"):
            polars_embed.embed([encoded("red")], "hashing")

    def test_images_are_batched_by_batch_size(self, sizes: Sizes) -> None:
        provider = CallableProvider(function=sizes, dims=3, images=True, batch_size=2)
        photos = [encoded((i, 0, 0)) for i in range(5)]
        vectors = polars_embed.embed(photos, provider).to_numpy()
        assert sizes.batches == [2, 2, 1]
        np.testing.assert_allclose(vectors[:, 0], np.arange(5) + 1)  # each row its own image's vector

    def test_a_callable_embeds_images_only_when_it_says_so(self, sizes: Sizes) -> None:
        provider = images_of(sizes)
        assert provider.input_kinds == ("text", "image")
        assert CallableProvider(function=sizes, dims=3).input_kinds == ("text",)

    def test_max_tokens_is_refused_for_images(self, sizes: Sizes) -> None:
        with pytest.raises(ConfigError, match="images have none"):
            polars_embed.embed([encoded("red")], images_of(sizes), max_tokens=10)

    def test_bytes_mixed_with_texts_are_refused(self, sizes: Sizes) -> None:
        with pytest.raises(InputTypeError, match="one kind per call"):
            polars_embed.embed([encoded("red"), "red"], images_of(sizes))

    def test_a_string_column_is_not_images_without_a_root(self, sizes: Sizes) -> None:
        with pytest.raises(InputTypeError, match=r"column 'photo' is String, but images are read from"):
            pl.DataFrame({"photo": ["red.png"]}).select(pl.col("photo").embed.images(images_of(sizes)))


class TestPathColumns:
    @pytest.fixture
    def photos(self, tmp_path: Path) -> Path:
        folder = tmp_path / "photos"
        (folder / "shoes").mkdir(parents=True)
        (folder / "red.png").write_bytes(encoded((200, 0, 0)))
        (folder / "shoes" / "blue.jpg").write_bytes(encoded((0, 0, 200), fmt="JPEG"))
        (tmp_path / "secret.png").write_bytes(encoded("white"))
        return folder

    @pytest.mark.parametrize("engine_name", ENGINES)
    def test_paths_under_the_root_embed_and_nulls_are_null(
        self, photos: Path, sizes: Sizes, engine_name: str
    ) -> None:
        frame = pl.LazyFrame({"path": ["red.png", None, "shoes/blue.jpg", "", "./red.png"]})
        with pl.Config(streaming_chunk_size=2):
            df = frame.select(pl.col("path").embed.images(images_of(sizes), root=photos)).collect(
                engine=engine_name
            )
        vectors = df["path"]
        assert vectors.is_null().to_list() == [False, True, False, True, False]
        np.testing.assert_allclose(vectors.to_numpy()[0], [201, 1, 1])
        np.testing.assert_array_equal(vectors.to_numpy()[4], vectors.to_numpy()[0])  # one file, one key

    @pytest.mark.parametrize(
        ("path", "refusal"),
        [
            ("../secret.png", "leads outside the images root"),
            ("shoes/../../secret.png", "leads outside the images root"),
            ("https://example.com/red.png", "is a URL"),
            ("missing.png", "cannot be read"),
        ],
    )
    def test_a_path_that_leaves_the_root_or_is_not_a_file_is_refused_before_anything_is_sent(
        self, photos: Path, sizes: Sizes, path: str, refusal: str
    ) -> None:
        frame = pl.DataFrame({"path": ["red.png", path]})
        with pytest.raises(
            InvalidImageError, match=rf"row 1 of 'path' \({path!r}\) {refusal}".replace("?", r"\?")
        ):
            frame.select(pl.col("path").embed.images(images_of(sizes), root=photos))
        assert sizes.seen == []

    def test_an_absolute_path_and_a_link_out_of_the_root_are_refused(
        self, photos: Path, sizes: Sizes
    ) -> None:
        os.symlink(photos.parent / "secret.png", photos / "link.png")
        for path in (str(photos / "red.png"), "link.png"):
            with pytest.raises(InvalidImageError, match="leads outside the images root"):
                polars_embed.embed([path], images_of(sizes), images=Images(photos))

    def test_a_root_that_is_not_a_folder_is_refused_at_once(self, tmp_path: Path, sizes: Sizes) -> None:
        with pytest.raises(ConfigError, match="is not a folder"):
            pl.col("path").embed.images(images_of(sizes), root=tmp_path / "nowhere")


class TestDuckDB:
    @pytest.fixture
    def con(self) -> Any:
        connection = duckdb.connect()
        photos = [encoded("blue"), None, encoded("red"), encoded("green"), encoded("red")]
        connection.register("frame", pl.DataFrame({"sku": ["b", "none", "r", "g", "r2"], "photo": photos}))
        connection.sql("CREATE TABLE products AS SELECT * FROM frame")
        yield connection
        connection.close()

    def test_embed_image_over_a_blob_column_and_a_text_query_finds_it(
        self, con: Any, clip: SentenceTransformersProvider
    ) -> None:
        duckdb_ext.register(con, clip)
        rows = con.sql(
            "SELECT sku, embed_image(photo) AS vec, typeof(embed_image(photo)) FROM products ORDER BY sku"
        ).fetchall()
        assert rows[0][2] == f"FLOAT[{PROJECTION}]"
        by_sku = {sku: vector for sku, vector, _ in rows}
        assert by_sku["none"] is None
        best = con.sql(
            "SELECT sku FROM products ORDER BY array_cosine_similarity(embed_image(photo), "
            "embed_query('green')) DESC NULLS LAST LIMIT 1"
        ).fetchall()
        assert best == [("g",)]

    def test_embed_table_fills_a_vector_column_from_a_blob_column(
        self, con: Any, clip: SentenceTransformersProvider
    ) -> None:
        assert duckdb_ext.embed_table(con, "products", "photo", into="vec", provider=clip) == 4
        stats = polars_embed.last_stats()
        assert (stats.distinct, stats.embedded) == (3, 3)
        hits = duckdb_ext.search(con, "products", "vec", "red", k=2, provider=clip).select("sku").fetchall()
        assert sorted(hits) == [("r",), ("r2",)]
        assert duckdb_ext.embed_table(con, "products", "photo", into="vec", provider=clip) == 0  # a rerun
        # The column's comment names the model, a local folder here, which is never loaded from it.
        with pytest.raises(ConfigError, match="a file never names a local path"):
            duckdb_ext.search(con, "products", "vec", "red", k=2)

    def test_a_text_provider_gets_no_embed_image_and_refuses_a_blob_column(self, con: Any) -> None:
        duckdb_ext.register(con, "hashing", dims=8)
        with pytest.raises(duckdb.Error, match="embed_image"):
            con.sql("SELECT embed_image(photo) FROM products").fetchall()
        with pytest.raises(InputTypeError, match="embeds text only, but column 'photo' holds images"):
            duckdb_ext.embed_table(con, "products", "photo", into="vec", provider="hashing")
        assert "vec" not in con.sql("SELECT * FROM products").columns

    def test_an_unreadable_blob_is_an_error_naming_its_row(
        self, con: Any, clip: SentenceTransformersProvider
    ) -> None:
        duckdb_ext.register(con, clip)
        con.sql("INSERT INTO products VALUES ('bad', 'not an image'::BLOB)")
        with pytest.raises(duckdb.Error, match=r"row 5 of .* cannot be read as an image"):
            con.sql("SELECT embed_image(photo) FROM products").fetchall()


class TestTables:
    def test_a_table_with_an_image_source_embeds_on_write_and_a_text_query_finds_it(
        self, tmp_path: Path, tiny_clip: Path, clip: SentenceTransformersProvider
    ) -> None:
        class Product(polars_embed.Model):
            sku: str = polars_embed.Id()
            photo: bytes | None = polars_embed.Source()
            photo_vec: polars_embed.Vector = polars_embed.VectorOf(
                "photo", provider="sentence-transformers", model=str(tiny_clip), device="cpu"
            )

        database = polars_embed.connect(tmp_path / "shop.duckdb")
        products = database.create_table("products", Product)
        rows = pl.DataFrame({"sku": ["r", "g", "none"], "photo": [encoded("red"), encoded("green"), None]})
        with polars_embed.track_stats() as first:
            products.upsert(rows)
        with polars_embed.track_stats() as again:
            products.upsert(rows)
        assert (first.embedded, again.embedded) == (2, 0)  # unchanged images are not embedded again
        products.upsert(pl.DataFrame({"sku": ["b"], "photo": [encoded("blue")]}))
        for colour in COLOURS:
            hits = products.search(colour).limit(1).to_polars()
            assert hits["sku"].to_list() == [colour[0]]
        # Reopened in code with the provider (the stored spec names a local folder, never loaded from it).
        reopened = polars_embed.connect(tmp_path / "shop.duckdb").open_table(
            "products", providers={"photo_vec": clip}
        )
        assert reopened.search("blue").limit(1).to_polars()["sku"].to_list() == ["b"]

    def test_an_image_source_needs_a_provider_that_embeds_images(self, tmp_path: Path) -> None:
        with pytest.raises(InputTypeError, match="embeds text only, but column 'photo' holds images"):
            polars_embed.connect(tmp_path / "shop.duckdb").create_table(
                "products",
                {"sku": str, "photo": bytes},
                id="sku",
                vectors={"photo_vec": polars_embed.VectorOf("photo", provider="hashing", dims=8)},
            )
