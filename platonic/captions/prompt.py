"""What we ask the model: the prompt, the structured-output schema and the optional image part."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from platonic.io.published_captions import NUM_LEVELS

CHARS_PER_TOKEN = 4
IMAGE_MAX_SIDE = 512

SYSTEM_PROMPT = (
    "You rewrite image captions for a study of how much of a caption is about its image. "
    "You answer with JSON that follows the given schema, and nothing else."
)

_INSTRUCTIONS = f"""Write {NUM_LEVELS} new versions of this caption with increasing uniqueness: \
version 1 is 10% unique, version 2 is 20% unique, and so on up to version {NUM_LEVELS}, which is \
100% unique.

Uniqueness is the share of the caption's visual content (the objects, people, animals, places, \
colours, counts, actions and layout it mentions) that you replace with details the image does \
not show. Each version must describe the image less than the one before it; at 100% nothing in \
it may match the image.

Keep the style, register and rough length of the original. Every version is a complete caption: \
keep colons, quotation marks and line breaks wherever the text needs them. Put the versions in \
order in "unique_captions", exactly {NUM_LEVELS} strings, each the caption text alone (no label, \
number or percentage), all different from each other and from the original."""


class UniqueCaptions(BaseModel):
    """The reply's schema, sent as a strict JSON schema through the SDK's structured output."""

    unique_captions: list[str] = Field(
        description=f"exactly {NUM_LEVELS} rewrites of the caption, from 10% to 100% unique")


def user_text(caption: str, with_image: bool = False) -> str:
    seen = "The image is attached.\n\n" if with_image else ""
    return f"{seen}Caption of the image:\n<caption>\n{caption}\n</caption>\n\n{_INSTRUCTIONS}"


def build_messages(caption: str, image_url: str | None = None,
                   image_detail: str = "auto") -> list[dict[str, Any]]:
    """Chat messages for one caption; `image_url` (a data URI) adds a proper image content part."""
    text = user_text(caption, with_image=image_url is not None)
    if image_url is None:
        content: str | list[dict[str, Any]] = text
    else:
        content = [{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": image_url, "detail": image_detail}}]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


def image_data_uri(image: Image.Image, max_side: int = IMAGE_MAX_SIDE) -> str:
    """A JPEG data URI of `image`, shrunk so that its longer side is at most `max_side`."""
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def estimate_tokens(text: str) -> int:
    """Rough token count (about 4 characters a token for English); good enough for a budget."""
    return max(1, round(len(text) / CHARS_PER_TOKEN))


def estimated_request_tokens(caption: str) -> tuple[int, int]:
    """About how many (input, output) tokens one request for `caption` costs, images aside."""
    prompt = estimate_tokens(SYSTEM_PROMPT) + estimate_tokens(user_text(caption))
    reply = NUM_LEVELS * (estimate_tokens(caption) + 4) + 10
    return prompt, reply
