"""What a column holds, and how the engine turns it into distinct items and provider inputs.

The engine dedups, caches and batches *keys*, one per row: a text is its own key,
an image is keyed by a digest of its encoded bytes (so equal images are embedded
once, and the cache keeps them by content, wherever they came from). A key
becomes what the provider embeds only when its batch is sent: texts as they are,
images decoded, converted to RGB and downscaled, one batch at a time, so a large
column never holds more than a batch of decoded images.

Images come as a ``pl.Binary`` column of encoded files (PNG, JPEG, WebP, GIF, BMP,
TIFF), or as a String column of paths explicitly marked as such (:class:`Images`
with a ``root``): relative paths under that root, never absolute, never a URL,
never a path that leads out of the root (``..``, a symbolic link).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from polars_embed.errors import ConfigError, InputTypeError, InvalidImageError, MissingDependencyError
from polars_embed.provider import InputKind, Provider

#: The longest side, in pixels, of an image handed to a model; larger ones are downscaled
#: first (CLIP models read 224 or 336 pixels, so this loses nothing they see).
MAX_IMAGE_SIDE = 1024
#: The largest image file read from a path, in bytes.
MAX_IMAGE_BYTES = 64 * 1024**2
#: The formats decoded; others (EPS, which runs Ghostscript, and rarer ones) are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_DIGEST = "sha256:"


@dataclass(frozen=True)
class Images:
    """Marks a column as images: ``pl.Binary`` encoded files, or with ``root``, String paths
    relative to ``root``.

    Parameters
    ----------
    root
        The folder that paths are relative to; ``None`` for a column of encoded bytes.
    """

    root: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if self.root is not None and not Path(self.root).is_dir():
            raise ConfigError(
                f"images root {str(self.root)!r} is not a folder; pass the folder of the images"
            )


@dataclass(frozen=True)
class Prepared:
    """One piece of a column, ready for the engine.

    Attributes
    ----------
    kind
        ``"text"`` or ``"image"``.
    keys
        A String Series aligned with the rows: each row's key, null for a null row
        (a blank one too, for texts).
    load
        Distinct keys to what the provider embeds: texts, or decoded images.
    """

    kind: InputKind
    keys: pl.Series
    load: Callable[[list[str]], list[Any]]


def input_kind(series: pl.Series, images: Images | None) -> InputKind:
    """``"image"`` for a Binary column or one marked as images, else ``"text"``."""
    return "image" if images is not None or series.dtype == pl.Binary else "text"


def check_accepts(provider: Provider, kind: InputKind, column: str | None = None) -> None:
    """An :class:`~polars_embed.InputTypeError` unless ``provider`` embeds inputs of ``kind``."""
    takes = provider.input_kinds
    if kind in takes:
        return
    fix = (
        "use a provider that embeds images, such as sentence-transformers with a CLIP model "
        "(model='clip-ViT-B-32')"
        if kind == "image"
        else "pass a column of images (Binary, or paths with root=)"
    )
    given = f"column {column!r} holds {kind}s" if column is not None else f"it was given {kind}s"
    raise InputTypeError(f"{provider.label} embeds {' and '.join(takes)} only, but {given}; {fix}")


def prepare(series: pl.Series, images: Images | None) -> Prepared:
    """Keys for the rows of ``series`` and the loader of their inputs.

    Reading the files of a path column happens here, so a missing file or a path out
    of the root is refused before anything is embedded; decoding waits for the batch.
    """
    if input_kind(series, images) == "text":
        return Prepared("text", series, list)
    root = None if images is None else images.root
    if series.dtype == pl.Binary:
        found = {i: data for i, data in enumerate(series.to_list()) if data is not None}
        where = {i: f"row {i} of {series.name!r}" for i in found}
    elif root is not None and series.dtype == pl.String:
        base = Path(root).resolve()
        paths = series.to_list()
        where = {i: f"row {i} of {series.name!r} ({path!r})" for i, path in enumerate(paths) if path}
        found = {i: _read(paths[i], base, where[i]) for i in where}
    else:
        marked = "paths (String) under root" if root is not None else "encoded images (Binary)"
        raise InputTypeError(
            f"column {series.name!r} is {series.dtype}, but images are read from {marked}; "
            "pass a Binary column of encoded images, or a String column of paths with root="
        )
    digests: list[str | None] = [None] * len(series)
    encoded: dict[str, tuple[bytes, str]] = {}
    for i, data in found.items():
        digest = _DIGEST + hashlib.sha256(data).hexdigest()
        digests[i] = digest
        encoded.setdefault(digest, (data, where[i]))

    def load(keys: list[str]) -> list[Any]:
        return [decode_image(*encoded[key]) for key in keys]

    return Prepared("image", pl.Series(series.name, digests, dtype=pl.String), load)


def decode_image(data: bytes, where: str) -> Any:
    """An encoded image as an RGB ``PIL.Image``, its longest side at most :data:`MAX_IMAGE_SIDE`.

    An image over Pillow's ``PIL.Image.MAX_IMAGE_PIXELS`` is refused as a
    decompression bomb, before it is decoded; one that cannot be decoded
    (corrupt, truncated, not an image, a format not in :data:`IMAGE_FORMATS`)
    is an :class:`~polars_embed.InvalidImageError` naming ``where``.
    """
    image_module = _pillow()
    try:
        with image_module.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            limit = image_module.MAX_IMAGE_PIXELS
            if limit and image.width * image.height > limit:
                raise _bomb(where, f"{image.width}x{image.height} pixels", limit)
            image.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))  # a JPEG decodes at a smaller scale
            rgb = image.convert("RGB")
    except InvalidImageError:
        raise
    except image_module.DecompressionBombError:  # Pillow's own check, at twice the limit
        raise _bomb(where, "too many pixels", image_module.MAX_IMAGE_PIXELS) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # UnidentifiedImageError is an OSError
        start = data[:8]
        unknown = isinstance(error, image_module.UnidentifiedImageError)
        cause = "not a format it knows" if unknown else str(error) or type(error).__name__
        raise InvalidImageError(
            f"{where} cannot be read as an image ({cause}; "
            f"{len(data)} bytes starting {start!r}); polars-embed reads {', '.join(IMAGE_FORMATS)}: "
            "fix or re-encode it, or drop that row"
        ) from None
    if max(rgb.size) > MAX_IMAGE_SIDE:
        rgb.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return rgb


def _bomb(where: str, size: str, limit: int | None) -> InvalidImageError:
    return InvalidImageError(
        f"{where} is an image of {size}, more than PIL.Image.MAX_IMAGE_PIXELS ({limit}) allows, "
        "refused as a possible decompression bomb; downscale it first, or raise "
        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    )


def _read(path: str, root: Path, where: str) -> bytes:
    """The bytes of the file ``path`` names under ``root``; anything else is refused."""
    if "://" in path or path.startswith("data:"):
        raise InvalidImageError(f"{where} is a URL; images are read from files under root, never fetched")
    relative = Path(path)
    target = (root / relative).resolve()
    if relative.is_absolute() or not target.is_relative_to(root):
        raise InvalidImageError(
            f"{where} leads outside the images root {str(root)!r}; paths are relative to root "
            "and stay inside it: move the file under root, or choose a root that holds it"
        )
    try:
        size = target.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise InvalidImageError(
                f"{where} is a file of {size} bytes, over the {MAX_IMAGE_BYTES} bytes an image may "
                "have here; downscale it first"
            )
        return target.read_bytes()
    except OSError as error:
        raise InvalidImageError(
            f"{where} cannot be read ({error.strerror or error}); check the path and root"
        ) from None


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as error:
        raise MissingDependencyError(
            "embedding images needs the 'pillow' package, which is not installed; "
            "install it with: pip install 'polars-embed[images]'"
        ) from error
    return Image
