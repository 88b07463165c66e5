"""The read stage's work on each photo: read, digest, decode, resize, encode.

All of it runs in Beam's workers with Pillow and numpy only: a worker never imports TensorFlow
(its import alone costs a worker about 3 s and 0.5 GB). JPEGs are decoded at a reduced scale
(Pillow's draft mode), so a 12 MP photo costs a fraction of a full decode.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np

from tlp.components.lib.dataprep import sources
from tlp.components.lib.dataprep.sources import Photo
from tlp.components.lib.specs import ConfigError, ServiceError

JPEG_QUALITY = 95
# PIL refuses images above ~179 Mpx as decompression bombs; our own ceiling is explicit (decode_bytes).
MAX_PIXELS = 200_000_000


def decode_file(path: str, max_side: int) -> np.ndarray:
    return decode_bytes(sources.read_bytes(path), max_side)


def decode_bytes(data: bytes, max_side: int) -> np.ndarray:
    """Decodes an image file's bytes into uint8 RGB: EXIF orientation applied, palette/grayscale/
    RGBA/CMYK converted, GIF first frame, and big JPEGs decoded at a reduced scale to bound memory."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    if not data:
        raise ConfigError("empty file (0 bytes)")  # a skip reason, listed in metadata.json
    with Image.open(io.BytesIO(data)) as image:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; make the ceiling a hard one.
        if image.width * image.height > MAX_PIXELS:
            raise ConfigError(f"{image.width}x{image.height} pixels is above the {MAX_PIXELS:,} pixel ceiling")
        image.draft("RGB", (max_side * 2, max_side * 2))  # JPEG only: decode near target size
        image.seek(0)
        picture: Image.Image = ImageOps.exif_transpose(image)
        if picture.mode in ("RGBA", "LA", "P"):
            picture = picture.convert("RGBA")
            flat = Image.new("RGBA", picture.size, (255, 255, 255, 255))
            picture = Image.alpha_composite(flat, picture)
        return np.asarray(picture.convert("RGB"), dtype=np.uint8)


def resize(pixels, image_size: int):
    """The serving signature's resize (TensorFlow, bilinear, antialiased). Data prep resizes with
    Pillow's antialiased bilinear filter (``encode_pixels``), the same filter; the two differ by
    rounding only (tests/unit/test_images.py bounds the difference)."""
    import tensorflow as tf

    return tf.image.resize(pixels, [image_size, image_size], method="bilinear", antialias=True)


def encode_pixels(pixels: np.ndarray, image_size: int) -> bytes:
    """uint8 pixels (HxW or HxWxC) -> a square ``image_size`` JPEG (quality 95, 4:2:0), resized
    with Pillow's antialiased bilinear filter; the aspect ratio is not kept (as the model sees it)."""
    return _jpeg(_resized(pixels, image_size))


def _resized(pixels: np.ndarray, image_size: int):
    from PIL import Image

    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3], dtype=np.uint8), "RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return image


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def prepare_bytes(data: bytes, image_size: int) -> bytes:
    """An image file's bytes as data prep stores the photo: decoded, resized, JPEG-encoded. Whatever
    compares new photos with training photos (``tlp drift``) prepares them so, or it would also
    measure the re-encoding (noisy lossless photos read as drifted at 160 px otherwise)."""
    return prepare_with_digest(data, image_size)[0]


def prepare_with_digest(data: bytes, image_size: int) -> tuple[bytes, str]:
    """``prepare_bytes`` and the SHA-256 of the resized pixels it encoded: the photo's identity for
    deduplication. The same picture saved again (another PNG compression, metadata stripped) has
    other bytes but these pixels; two different pictures never share them (their JPEGs can: solid
    colours one level apart encode alike)."""
    picture = _resized(decode_bytes(data, image_size), image_size)
    return _jpeg(picture), hashlib.sha256(picture.tobytes()).hexdigest()


def _failure(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


def read_unit(unit: tuple, index: int, image_size: int) -> list[Photo]:
    """The photos of one listing unit (``sources.Listing.units[index]``), each read, digested
    and encoded, or with the decoder's error (skip and say why); a failed read raises."""
    kind = unit[0]
    if kind == "files":
        return [_read_file(path, label, (index, i), image_size) for i, (path, label) in enumerate(unit[1])]
    if kind == "sample":
        seed, items = unit[1], unit[2]
        return [Photo((index, i), source_id, label,
                      encoded=encode_pixels(sources.sample_pixels(label, (seed, label, number)), image_size))
                for i, (source_id, label, number) in enumerate(items)]
    if kind == "tfds":
        return _read_tfds(unit, index, image_size)
    raise ServiceError(f"unknown listing unit {kind!r}; this is a bug in tlp's data prep, please report it")


def dangling_link(path: str) -> bool:
    """A local link to a file that is gone: nothing can be read, so it is an unreadable photo."""
    return "://" not in path and os.path.islink(path) and not os.path.exists(path)


def _read_file(path: str, label: int, order: tuple, image_size: int) -> Photo:
    """One file: a read that fails stops the step (``sources.read_bytes``: refused, gone, or still
    failing after retries is no bad photo); bytes that were read and do not decode are skipped
    with the decoder's reason. A link to a missing file is skipped too: nothing can be read."""
    photo = Photo(order, path, label)
    if dangling_link(path):
        photo.error = f"a link to a missing file ({os.readlink(path)})"
        return photo
    data = sources.read_bytes(path)
    photo.digest = hashlib.sha256(data).hexdigest()
    try:
        photo.encoded, photo.prepared_digest = prepare_with_digest(data, image_size)
    except MemoryError:  # the machine's limit, not the photo's: skipping it would make the data set depend on it
        raise
    except Exception as error:  # the bytes were read: any decoder failure means "skip and say why"
        photo.error = _failure(error)
    return photo


def _read_tfds(unit: tuple, index: int, image_size: int) -> list[Photo]:
    """One even sub-split of a TFDS slice (the worker imports tfds: the set is read through it)."""
    import tensorflow_datasets as tfds

    _, name, data_dir, split, (percent, parts, which) = unit
    part = tfds.even_splits(percent, n=parts)[which]
    photos = []
    dataset = tfds.load(name, split=part, data_dir=data_dir, as_supervised=False)
    for i, record in enumerate(dataset.as_numpy_iterator()):
        filename = record.get("image/filename", b"")
        if isinstance(filename, bytes):
            filename = filename.decode("utf-8", "replace")
        photo = Photo((index, i), filename or f"tfds:{name}/{part}/{i}", int(record["label"]), split=split)
        try:
            photo.encoded = encode_pixels(record["image"], image_size)
        except MemoryError:
            raise
        except Exception as error:  # a record that cannot be encoded is skipped with its reason
            photo.error = _failure(error)
        photos.append(photo)
    return photos
