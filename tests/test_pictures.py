"""Pictures of an embedding space: project (PCA against numpy's SVD), cluster (against
scikit-learn's k-means), and the Altair scatter that df.embed.plot returns."""

from __future__ import annotations

import sys

import numpy as np
import polars as pl
import pytest

import polars_embed  # noqa: F401  (registers .embed)
from polars_embed import ConfigError, MissingDependencyError
from polars_embed._project import fit_projection, kmeans


def vectors_frame(matrix: np.ndarray, nulls: tuple[int, ...] = ()) -> pl.DataFrame:
    column = pl.Series("vec", matrix.astype(np.float32))
    if nulls:
        missing = np.zeros(len(matrix), dtype=bool)
        missing[list(nulls)] = True
        column = pl.select(pl.when(pl.Series(~missing)).then(column)).to_series()
    return pl.DataFrame({"id": range(len(matrix))}).with_columns(column)


@pytest.fixture
def matrix() -> np.ndarray:
    generator = np.random.default_rng(7)
    # Distinct spreads along the axes, so the principal directions are well separated.
    return generator.standard_normal((300, 12)) * np.linspace(3.0, 0.5, 12) + 4.0


class TestProject:
    def test_pca_is_numpy_svd_of_the_centred_vectors(self, matrix: np.ndarray) -> None:
        projected = vectors_frame(matrix).select(pl.col("vec").embed.project(n=3))["vec"].to_numpy()
        centred = matrix.astype(np.float32).astype(np.float64)
        centred -= centred.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        reference = centred @ vt[:3].T
        signs = np.sign((projected * reference).sum(axis=0))  # numpy's SVD signs are arbitrary
        np.testing.assert_allclose(projected, reference * signs, rtol=1e-4, atol=1e-4)

    def test_each_axis_is_signed_by_its_largest_loading(self, matrix: np.ndarray) -> None:
        projection = fit_projection(matrix.astype(np.float32), 2)
        components = projection.components
        assert components is not None
        largest = components[np.arange(2), np.argmax(np.abs(components), axis=1)]
        assert (largest > 0).all()
        np.testing.assert_allclose(np.linalg.norm(components, axis=1), 1.0, rtol=1e-9)

    def test_the_same_vectors_give_the_same_picture_in_any_order(self, matrix: np.ndarray) -> None:
        frame = vectors_frame(matrix)
        first = frame.select(pl.col("vec").embed.project())["vec"].to_numpy()
        again = frame.select(pl.col("vec").embed.project())["vec"].to_numpy()
        order = np.random.default_rng(1).permutation(len(matrix))
        shuffled = frame[order].select(pl.col("vec").embed.project())["vec"].to_numpy()
        np.testing.assert_array_equal(first, again)
        np.testing.assert_allclose(shuffled, first[order], rtol=1e-4, atol=1e-4)

    def test_null_vectors_stay_null_and_take_no_part(self, matrix: np.ndarray) -> None:
        with_nulls = vectors_frame(matrix, nulls=(0, 5, 299))
        projected = with_nulls.select(pl.col("vec").embed.project())["vec"]
        assert projected.dtype == pl.Array(pl.Float32, 2)
        assert projected.is_null().arg_true().to_list() == [0, 5, 299]
        kept = np.delete(np.arange(300), [0, 5, 299])
        without = vectors_frame(matrix[kept]).select(pl.col("vec").embed.project())["vec"].to_numpy()
        np.testing.assert_allclose(projected.drop_nulls().to_numpy(), without, rtol=1e-5, atol=1e-5)

    def test_bad_arguments_are_clear(self, matrix: np.ndarray) -> None:
        with pytest.raises(ConfigError, match="1, 2 or 3 coordinates"):
            pl.col("vec").embed.project(n=4)
        with pytest.raises(ConfigError, match="unknown projection method 'tsne'"):
            pl.col("vec").embed.project(method="tsne")  # type: ignore[arg-type]
        all_null = pl.DataFrame({"vec": [None, None]}, schema={"vec": pl.Array(pl.Float32, 3)})
        assert all_null.select(pl.col("vec").embed.project())["vec"].null_count() == 2

    def test_umap_is_an_optional_extra(self, matrix: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "umap", None)
        with pytest.raises(MissingDependencyError, match=r"pip install 'polars-embed\[umap\]'"):
            vectors_frame(matrix).select(pl.col("vec").embed.project(method="umap"))

    def test_umap_is_seeded(self, matrix: np.ndarray) -> None:
        pytest.importorskip("umap")
        frame = vectors_frame(matrix[:120], nulls=(3,))
        first = frame.select(pl.col("vec").embed.project(method="umap", seed=3))["vec"]
        again = frame.select(pl.col("vec").embed.project(method="umap", seed=3))["vec"]
        assert first.null_count() == 1 and first.dtype == pl.Array(pl.Float32, 2)
        np.testing.assert_array_equal(first.drop_nulls().to_numpy(), again.drop_nulls().to_numpy())


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    centres = generator.uniform(-10, 10, size=(5, 8))
    truth = generator.integers(5, size=400)
    return (centres[truth] + generator.standard_normal((400, 8))).astype(np.float32), truth


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labelings group the rows the same way, whatever the numbers."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


class TestCluster:
    def test_lloyd_matches_scikit_learn_from_the_same_seeds(self) -> None:
        sklearn_cluster = pytest.importorskip("sklearn.cluster")
        data = np.random.default_rng(3).standard_normal((500, 6)).astype(np.float32)  # no true clusters
        init = data[[0, 50, 100, 150, 200, 250]].astype(np.float64)
        labels, centres = kmeans(data, 6, init=init)
        reference = sklearn_cluster.KMeans(6, init=init, n_init=1, algorithm="lloyd", tol=0.0).fit(
            data.astype(np.float64)
        )
        assert same_partition(labels, reference.labels_)
        order = [int(reference.labels_[np.argmax(labels == c)]) for c in range(6)]
        np.testing.assert_allclose(centres, reference.cluster_centers_[order], rtol=1e-4, atol=1e-4)

    def test_it_finds_the_clusters_scikit_learn_finds(self) -> None:
        sklearn_cluster = pytest.importorskip("sklearn.cluster")
        data, truth = blobs()
        labels = vectors_frame(data).select(pl.col("vec").embed.cluster(5, seed=1))["vec"].to_numpy()
        reference = sklearn_cluster.KMeans(5, n_init=10, random_state=0).fit(data)
        assert same_partition(labels, reference.labels_) and same_partition(labels, truth)

    def test_deterministic_with_a_seed_and_numbered_by_first_appearance(self) -> None:
        data, _ = blobs(1)
        frame = vectors_frame(data)
        first = frame.select(pl.col("vec").embed.cluster(5, seed=4))["vec"]
        assert first.equals(frame.select(pl.col("vec").embed.cluster(5, seed=4))["vec"])
        assert first.dtype == pl.UInt32 and first[0] == 0
        assert first.unique(maintain_order=True).to_list() == [0, 1, 2, 3, 4]

    def test_null_vectors_get_null_labels(self) -> None:
        data, _ = blobs(2)
        labels = vectors_frame(data, nulls=(1, 2)).select(pl.col("vec").embed.cluster(5))["vec"]
        assert labels.is_null().arg_true().to_list() == [1, 2]
        assert labels.drop_nulls().n_unique() == 5

    def test_more_clusters_than_vectors_is_clear(self) -> None:
        frame = vectors_frame(np.eye(3), nulls=(0,))
        with pytest.raises(ConfigError, match="cannot make 3 clusters of 2 non-null vectors"):
            frame.select(pl.col("vec").embed.cluster(3))


@pytest.fixture
def documents() -> pl.DataFrame:
    texts = ["a cat sat", "the cat slept", None, "stock prices fell", "markets rallied", "a dog barked"]
    frame = pl.DataFrame({"text": texts, "lang": ["en"] * 6})
    frame = frame.with_columns(vec=pl.col("text").embed.with_provider("hashing", dims=64))
    return frame.with_columns(topic=pl.col("vec").embed.cluster(2))


def layer_data(chart: object, index: int) -> pl.DataFrame:
    """A layer's rows: Altair moves the data of a lone layer up to the chart."""
    data = chart.layer[index].data  # type: ignore[attr-defined]
    return data if isinstance(data, pl.DataFrame) else chart.data  # type: ignore[attr-defined]


class TestPlot:
    @pytest.fixture(autouse=True)
    def altair(self) -> None:
        pytest.importorskip("altair")

    def test_one_point_per_row_with_a_vector(self, documents: pl.DataFrame) -> None:
        chart = documents.embed.plot(color="topic", tooltip=["text", "lang"])
        assert len(chart.layer) == 1
        points = layer_data(chart, 0)
        assert points.height == 5  # the null text has no vector, so no point
        assert set(points.columns) == {"_x", "_y", "text", "lang", "topic"}
        projected = documents.drop_nulls("vec").select(pl.col("vec").embed.project())["vec"].to_numpy()
        np.testing.assert_allclose(points.select("_x", "_y").to_numpy(), projected, rtol=1e-6)
        spec = chart.to_dict()
        assert spec["layer"][0]["encoding"]["color"]["field"] == "topic"

    def test_queries_are_drawn_with_their_neighbours(self, documents: pl.DataFrame) -> None:
        chart = documents.embed.plot(tooltip="text", query=["cat", "stock markets"], k=2)
        points, rings, crosses = chart.layer
        assert points.data.height == 5 and crosses.data["query"].to_list() == ["cat", "stock markets"]
        assert rings.data.height == 4
        nearest = documents.embed.search(["cat", "stock markets"], k=2)
        assert rings.data["text"].to_list() == nearest["text"].to_list()
        assert rings.data["query"].to_list() == ["cat", "cat", "stock markets", "stock markets"]

    def test_max_points_draws_a_seeded_sample(self, documents: pl.DataFrame) -> None:
        chart = documents.embed.plot(tooltip="text", max_points=3)
        again = documents.embed.plot(tooltip="text", max_points=3)
        assert layer_data(chart, 0).height == 3
        assert layer_data(chart, 0).equals(layer_data(again, 0))

    def test_bad_columns_are_clear(self, documents: pl.DataFrame) -> None:
        with pytest.raises(ConfigError, match="no column 'body' to show"):
            documents.embed.plot(tooltip="body")
        with pytest.raises(ConfigError, match="colour and tooltips take plain values"):
            documents.embed.plot(tooltip="vec")

    def test_altair_is_an_optional_extra(
        self, documents: pl.DataFrame, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setitem(sys.modules, "altair", None)
        with pytest.raises(MissingDependencyError, match=r"pip install 'polars-embed\[plot\]'"):
            documents.embed.plot()
