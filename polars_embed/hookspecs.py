"""Hook specifications: the whole contract between polars-embed and its plugins.

A plugin is any module or object with functions marked ``@hookimpl``. Built-in
providers are plugins like any other; third-party ones are found through the
``polars_embed`` entry-point group::

    # pyproject.toml of a third-party package
    [project.entry-points.polars_embed]
    my_provider = "my_package.plugin"

    # my_package/plugin.py
    from polars_embed import hookimpl

    @hookimpl
    def polars_embed_providers():
        return [MyProvider]

    @hookimpl
    def polars_embed_rerankers():  # optional: rerankers, a namespace of their own
        return [MyReranker]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from polars_embed.provider import Provider
    from polars_embed.reranker import Reranker

PROJECT_NAME = "polars_embed"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def polars_embed_providers() -> list[type[Provider]]:
    """Return the provider classes this plugin contributes.

    Each class subclasses :class:`polars_embed.Provider` and sets a unique
    ``name``; the registry refuses a name that is already taken.
    """


@hookspec
def polars_embed_rerankers() -> list[type[Reranker]]:
    """Return the reranker classes this plugin contributes.

    Each class subclasses :class:`polars_embed.Reranker` and sets a ``name``
    unique among rerankers (a provider may have the same name: ``"cohere"`` is
    both); the registry refuses a name that is already taken.
    """
