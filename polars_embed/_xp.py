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


def pack_bits(xp: Namespace, bits: Array) -> Array:
    """Pack a 2-D boolean array ``(n, d)`` into ``(n, ceil(d / 64))`` uint64 words, zero-padded.

    Bit ``j`` of a row lands in word ``j // 64``; only equality of codes
    matters (Hamming distances), not the order of bits inside a word.
    """
    n_rows, width = bits.shape
    n_words = -(-width // 64)
    if array_api_compat.is_numpy_namespace(xp):
        import numpy

        packed = numpy.packbits(bits, axis=1)
        padded = numpy.zeros((n_rows, n_words * 8), dtype=numpy.uint8)
        padded[:, : packed.shape[1]] = packed
        return padded.view(numpy.uint64)
    device = array_api_compat.device(bits)
    padding = xp.zeros((n_rows, n_words * 64 - width), dtype=xp.bool, device=device)
    grouped = xp.reshape(xp.concat([bits, padding], axis=1), (n_rows, n_words, 64))
    weights = xp.asarray(1, dtype=xp.uint64, device=device) << xp.arange(64, dtype=xp.uint64, device=device)
    return xp.sum(xp.where(grouped, weights, xp.asarray(0, dtype=xp.uint64, device=device)), axis=2)


def bitwise_count(xp: Namespace, x: Array) -> Array:
    """The number of set bits of each element of the uint64 array ``x``, as uint8."""
    if array_api_compat.is_numpy_namespace(xp):
        import numpy

        return numpy.bitwise_count(x)
    if array_api_compat.is_cupy_namespace(xp):
        import cupy

        if hasattr(cupy, "bitwise_count"):
            return cupy.bitwise_count(x)

    # Standard calls only: the classic SWAR count, summing bits in ever wider fields.
    def constant(value: int) -> Array:
        return xp.asarray(value, dtype=xp.uint64, device=array_api_compat.device(x))

    x = x - ((x >> constant(1)) & constant(0x5555555555555555))
    x = (x & constant(0x3333333333333333)) + ((x >> constant(2)) & constant(0x3333333333333333))
    x = (x + (x >> constant(4))) & constant(0x0F0F0F0F0F0F0F0F)
    for shift in (8, 16, 32):
        x = x + (x >> constant(shift))
    return xp.astype(x & constant(0x7F), xp.uint8)
