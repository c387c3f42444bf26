"""``df.embed.plot``: an Altair scatter of an embedding space, with queries and their neighbours.

Altair is what Polars' own ``df.plot`` draws with; it is imported only here (the
``plot`` extra). The chart is three layers on one projection: the rows, rings on
each query's nearest rows, and a cross where each query falls.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl

from polars_embed._project import Method, fit_projection
from polars_embed.errors import ConfigError, MissingDependencyError
from polars_embed.namespaces._vectors import as_matrix

if TYPE_CHECKING:
    import altair as alt

_X, _Y = "_x", "_y"  # coordinate fields; user columns keep their own names
_ROW, _QUERY, _SCORE = "__plot_row__", "__plot_query__", "__plot_score__"
_LABEL = "query"


class _QueryPlan(Protocol):
    """What the plot needs of a validated search (``frame._Search``)."""

    texts: tuple[str, ...] | None
    query_index: str | None
    score: str

    def query_vectors(self, column: pl.Series) -> np.ndarray: ...

    def answer(self, frame: pl.DataFrame, queries: np.ndarray) -> pl.DataFrame: ...


def plot_chart(
    frame: pl.DataFrame,
    *,
    on: str,
    color: str | None,
    tooltip: str | Sequence[str] | None,
    search: _QueryPlan | None,
    method: Method,
    seed: int,
    max_points: int | None,
) -> alt.LayerChart:
    """The chart :meth:`EmbedFrameNamespace.plot` documents."""
    alt = _altair()
    shown = [tooltip] if isinstance(tooltip, str) else list(tooltip or [])
    for name in [*shown, *([color] if color else [])]:
        if name not in frame.columns:
            raise ConfigError(
                f"no column {name!r} to show; the columns are {', '.join(map(repr, frame.columns))}"
            )
        if name == on or frame.schema[name].is_nested():
            raise ConfigError(
                f"column {name!r} holds {frame.schema[name]}: colour and tooltips take plain values"
            )
    column = frame[on]
    valid = column.is_not_null().to_numpy()
    vectors = as_matrix(column)[valid]
    projection = fit_projection(vectors, 2, method=method, seed=seed)
    axis = method.upper()
    rows = frame.select(*dict.fromkeys([*shown, *([color] if color else [])])).with_row_index(_ROW)
    placed = rows.filter(pl.Series(valid)).with_columns(_coordinates(projection.transform(vectors)))
    points = placed
    if max_points is not None and placed.height > max_points:
        points = placed.sample(max_points, seed=seed).sort(_ROW)

    def encoded(chart: alt.Chart, tips: list[Any]) -> alt.Chart:
        return chart.encode(
            x=alt.X(_X, type="quantitative", title=f"{axis} 1"),
            y=alt.Y(_Y, type="quantitative", title=f"{axis} 2"),
            tooltip=tips,
        )

    tips = [alt.Tooltip(_field(name)) for name in shown]
    base = encoded(alt.Chart(points.drop(_ROW)).mark_circle(size=28, opacity=0.65), tips)
    if color:
        base = base.encode(color=alt.Color(_field(color), type="nominal"))
    layers = [base]
    if search is not None:
        queries = search.query_vectors(column)
        labels = list(search.texts) if search.texts else [f"query {i}" for i in range(len(queries))]
        hits = search.answer(frame.with_row_index(_ROW).select(_ROW, on), queries)
        numbers = hits[search.query_index] if search.query_index else pl.repeat(0, hits.height, eager=True)
        neighbours = (
            hits.select(_ROW, pl.Series(_LABEL, labels).gather(numbers), hits[search.score].alias(_SCORE))
            .join(placed.select(_ROW, _X, _Y, *shown), on=_ROW, maintain_order="left")
            .drop(_ROW)
        )
        ring = alt.Chart(neighbours).mark_point(size=140, filled=False, color="black", strokeWidth=1.5)
        layers.append(
            encoded(ring, [alt.Tooltip(_LABEL), alt.Tooltip(_SCORE, title="score", format=".3f"), *tips])
        )
        crosses = pl.DataFrame({_LABEL: labels}).with_columns(_coordinates(projection.transform(queries)))
        cross = alt.Chart(crosses).mark_point(shape="cross", size=260, filled=True, color="black")
        layers.append(encoded(cross, [alt.Tooltip(_LABEL)]))
    return alt.layer(*layers).properties(width=640, height=440).interactive()


def _coordinates(coordinates: np.ndarray) -> list[pl.Series]:
    return [pl.Series(_X, coordinates[:, 0]), pl.Series(_Y, coordinates[:, 1])]


def _field(name: str) -> str:
    """A column name as a Vega-Lite field: dots and brackets would mean nesting."""
    return name.replace("\\", "\\\\").replace(".", "\\.").replace("[", "\\[").replace("]", "\\]")


def _altair() -> Any:
    try:
        return importlib.import_module("altair")
    except ImportError:
        raise MissingDependencyError(
            "df.embed.plot needs the 'altair' package, which is not installed; "
            "install it with: pip install 'polars-embed[plot]'"
        ) from None
