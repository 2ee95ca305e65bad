"""Fingerprints of the inputs a feature file was made from, stored in its metadata.

A feature file is reused, and the API's `get_data` trusts rebuilt samples, only when these match.
"""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image

from platonic.io.storage import sha256_of, sha256_of_stream


def images_fingerprint(images: Iterable[Image.Image]) -> str:
    """sha256 over every image's mode, size and pixels, in order; one image held at a time (a
    lazy sequence is decoded as it is read)."""
    return sha256_of_stream(part for img in images for part in (img.mode, list(img.size), img.tobytes()))


def texts_fingerprint(texts: list[str]) -> str:
    return sha256_of(texts)
