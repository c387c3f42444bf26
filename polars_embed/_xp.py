"""The few array operations the array API standard does not cover.

Everything else in the kernels is written against the standard through
``array_api_compat``, so that numpy, CuPy and ``array_api_strict`` arrays share
one code path. Keep this module small: each helper here has a fast
library-specific branch and a slower fallback that uses standard calls only.
"""

from __future__ import annotations

import contextlib
from typing import Any, TypeAlias

import array_api_compat

from polars_embed.errors import InputTypeError

# The standard has no array type to annotate with; any conforming array is accepted.
Array: TypeAlias = Any
Namespace: TypeAlias = Any


def namespace(*arrays: Array | None) -> Namespace:
    """Return the array API namespace shared by ``arrays``, ignoring ``None``."""
    try:
        return array_api_compat.array_namespace(*(a for a in arrays if a is not None))
    except TypeError:
        kinds = ", ".join(
            sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays if a is not None})
        )
        raise InputTypeError(
            f"vectors must be arrays of one array library (numpy, CuPy, ...), got {kinds}; "
            "convert them to one first, e.g. with numpy.asarray"
        ) from None


def float_errors_ignored() -> contextlib.AbstractContextManager[Any]:
    """Silence numpy's floating-point warnings (also raised through array_api_strict).

    The kernels take NaN, infinite and zero rows as ordinary input and mask what
    they produce; the warnings would only be noise, or errors under ``-W error``.
    """
    try:
        import numpy
    except ImportError:  # numpy-free installs (e.g. CuPy only) have no such warnings
        return contextlib.nullcontext()
    return numpy.errstate(all="ignore")


def kth_largest(xp: Namespace, x: Array, k: int) -> Array:
    """Return the ``k``-th largest value of each row of the 2-D array ``x``.

    ``x`` must hold no NaN and ``1 <= k <= x.shape[1]``. numpy and CuPy use a
    linear-time partition; the standard only offers a full sort, which is kept
    as the fallback for other libraries.
    """
    width = x.shape[1]
    if array_api_compat.is_numpy_namespace(xp):
        import numpy

        return numpy.partition(x, width - k, axis=1)[:, width - k]
    if array_api_compat.is_cupy_namespace(xp):
        import cupy

        return cupy.partition(x, width - k, axis=1)[:, width - k]
    return xp.sort(x, axis=1)[:, width - k]
