"""The error hierarchy: one base, the built-in bases kept, and every error rebuilt from its message."""

from __future__ import annotations

import inspect
import pickle
import re

import polars as pl
import pytest

import polars_embed
from polars_embed import errors

CLASSES = [
    value
    for value in vars(errors).values()
    if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__
]
# What each error replaces, so that an existing ``except`` clause still catches it.
REPLACES = {
    errors.ConfigError: ValueError,
    errors.InvalidInputError: ValueError,
    errors.InputTypeError: TypeError,
    errors.DimensionMismatchError: ValueError,
    errors.ColumnNotFoundError: pl.exceptions.ColumnNotFoundError,
    errors.DuplicateColumnError: pl.exceptions.DuplicateError,
    errors.UnknownProviderError: KeyError,
    errors.DuplicateProviderError: ValueError,
    errors.MissingDependencyError: ImportError,
}
ENGINES = ["eager", "in-memory", "streaming"]
MESSAGE = "the cause, and what to do about it"


def test_every_error_is_exported_and_derives_from_the_base() -> None:
    assert len(CLASSES) >= 15
    for cls in CLASSES:
        assert getattr(polars_embed, cls.__name__) is cls and cls.__name__ in polars_embed.__all__
        assert issubclass(cls, errors.PolarsEmbedError)


def test_every_class_is_drawn_in_the_hierarchy_at_the_top_of_the_module() -> None:
    drawing = errors.__doc__.split("::", 1)[1]
    for cls in CLASSES:
        assert re.search(rf"^ +(\W+ )?{cls.__name__}\b", drawing, re.MULTILINE), cls.__name__


@pytest.mark.parametrize(("cls", "builtin"), REPLACES.items(), ids=lambda value: value.__name__)
def test_each_error_is_also_what_it_replaces(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, builtin)
    with pytest.raises(builtin, match=MESSAGE):
        raise cls(MESSAGE)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_is_rebuilt_from_its_message_and_pickles(cls: type[Exception]) -> None:
    rebuilt = cls(MESSAGE)  # what Polars does on the way out of an expression
    assert str(rebuilt) == MESSAGE
    unpickled = pickle.loads(pickle.dumps(rebuilt))
    assert type(unpickled) is cls and str(unpickled) == MESSAGE and vars(unpickled) == vars(rebuilt)


def test_attributes_survive_pickling() -> None:
    retry = pickle.loads(pickle.dumps(errors.RetryableProviderError("429 slow down", retry_after=2.5)))
    assert retry.retry_after == 2.5
    incomplete = pickle.loads(pickle.dumps(errors.EmbeddingIncompleteError("failed", done=3, total=7)))
    assert (incomplete.done, incomplete.total) == (3, 7)


def test_an_incomplete_error_rebuilt_from_its_message_still_knows_how_far_it_got() -> None:
    message = (
        "x:y failed after 4 of 10 distinct texts were embedded (1 from the cache), so nothing was returned"
    )
    assert (
        errors.EmbeddingIncompleteError(message).done,
        errors.EmbeddingIncompleteError(message).total,
    ) == (
        4,
        10,
    )
    unknown = errors.EmbeddingIncompleteError("some other words")
    assert (unknown.done, unknown.total) == (None, None)


def run(engine: str, frame: pl.DataFrame, expression: pl.Expr) -> pl.DataFrame:
    if engine == "eager":
        return frame.with_columns(out=expression)
    return frame.lazy().with_columns(out=expression).collect(engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_keeps_its_class_and_words_through_a_polars_expression(
    cls: type[Exception], engine: str
) -> None:
    def fail(texts: pl.Series) -> pl.Series:
        raise cls(MESSAGE)

    expression = pl.col("text").map_batches(fail, return_dtype=pl.String, is_elementwise=True)
    with pytest.raises(cls) as raised:
        run(engine, pl.DataFrame({"text": ["a", "b"]}), expression)
    assert type(raised.value) is cls
    assert str(raised.value).startswith(MESSAGE)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_column_that_is_not_text(engine: str) -> None:
    expression = pl.col("number").embed.with_provider("hashing", dims=8)
    with pytest.raises(errors.InputTypeError) as raised:
        run(engine, pl.DataFrame({"number": [1, 2]}), expression)
    assert type(raised.value) is errors.InputTypeError
    assert "'number' is Int64; convert it first, e.g. pl.col('number').cast(pl.String)" in str(raised.value)
