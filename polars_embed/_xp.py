"""The few array operations the array API standard does not cover.

Everything else in the kernels is written against the standard through
``array_api_compat``, so that numpy, CuPy and ``array_api_strict`` arrays share
one code path. Keep this module small: each helper here has a fast
library-specific branch and a slower fallback that uses standard calls only.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, TypeAlias

import array_api_compat

from polars_embed._env import env_flag
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


# Below this many multiply-adds a product is over in microseconds, and handing it to
# torch costs more than its faster kernel saves (measured in benchmarks/README.md).
_TORCH_MIN_MULTIPLY_ADDS = 2**18
# torch's CPU threads (GNU OpenMP) hang a child forked after its parent used them.
_forked_child = False


def matmul(xp: Namespace, a: Array, b: Array) -> Array:
    """Return the matrix product ``a @ b`` of two 2-D arrays.

    numpy float32 products of two or more rows go through torch's CPU matmul
    when torch is already imported (as the sentence-transformers provider
    imports it): on x86 its wheels carry MKL, whose float32 GEMM measured 1.4x
    to 4x as fast as the OpenBLAS in numpy's wheels. The arrays are shared,
    not copied. Nothing here imports torch: that costs about a second. numpy
    keeps one-row products (its matrix-vector product is the faster),
    small ones, arrays with negative strides (torch cannot view them), and
    every product while torch's float32 matmul is allowed a lower precision
    (``torch.set_float32_matmul_precision("medium")`` makes it bfloat16 on
    CPUs with AMX), since topk promises exact float32 scores. A forked child
    keeps numpy too: torch's threads hang there once its parent used them.
    ``POLARS_EMBED_TORCH_MATMUL=0`` keeps every product in numpy.
    """
    torch = _torch_for(xp, a, b)
    if torch is None:
        return a @ b
    try:
        product = torch.matmul(torch.from_dlpack(a), torch.from_dlpack(b))
    except BufferError:  # numpy before 2.1 cannot export read-only arrays, as Arrow's are
        return a @ b
    return product.numpy()


def _torch_for(xp: Namespace, a: Array, b: Array) -> Any:
    """torch, where :func:`matmul` hands it this product; else None."""
    torch = sys.modules.get("torch")
    if torch is None or _forked_child or not array_api_compat.is_numpy_namespace(xp):
        return None
    import numpy

    if a.ndim != 2 or b.ndim != 2 or a.shape[0] < 2:
        return None
    if a.shape[0] * a.shape[1] * b.shape[1] < _TORCH_MIN_MULTIPLY_ADDS:
        return None
    if a.dtype != numpy.float32 or b.dtype != numpy.float32 or min(a.strides + b.strides) < 0:
        return None
    if env_flag("POLARS_EMBED_TORCH_MATMUL") is False or not _exact_float32_matmul(torch):
        return None
    return torch


def _exact_float32_matmul(torch: Any) -> bool:
    """Whether torch computes float32 CPU products in float32, not bfloat16 or TF32."""
    try:
        settings = getattr(torch.backends.mkldnn, "matmul", None)  # torch 2.9 and later
        if settings is not None:
            return settings.fp32_precision in ("none", "ieee")
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:  # torch refuses to say when both of its setting APIs were used
        return False


def _note_fork() -> None:
    global _forked_child
    _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


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
