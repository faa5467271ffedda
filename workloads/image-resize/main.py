"""image-resize: scale and convert an image with Pillow.

Input  {"image_base64": str, "width"?: int, "height"?: int, "format": "png"|"jpeg"|"webp",
        "fit"?: "contain"|"exact" (default contain: keep the aspect ratio inside width × height),
        "quality"?: 1-95 (jpeg, webp; default 85)}
       Only width or only height keeps the aspect ratio; neither keeps the size (a format conversion).
Events: status, one image event {data (base64), format, width, height}, then done without `output`, so the
job's output is that image (DESIGN §8: {"image_data", "format", "width", "height"}).
Limits: a source of at most 16 megapixels (checked from the header, before decoding), a result of at most
4096 px a side; PNG, JPEG, WebP, GIF, BMP and TIFF sources.
"""

from __future__ import annotations

import base64
import io
import warnings
from typing import Any

from workload_io import InputError, base64_field, choice_field, emit, int_field, serve

MAX_INPUT_BYTES = 24 * 1024 * 1024
MAX_SOURCE_PIXELS = 16_000_000
MAX_SIDE = 4096
MAX_OUTPUT_BASE64 = 3 * 1024 * 1024  # the image event must fit one output line
SOURCE_FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]
SAVE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def decode(data: bytes) -> Any:
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SOURCE_FORMATS)
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise InputError(f"the image is {image.width}×{image.height} = {image.width * image.height} "
                                 f"pixels, past the limit of {MAX_SOURCE_PIXELS} pixels; send a smaller one")
            image.load()
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise InputError("image_base64 is not an image in a supported format "
                         f"({', '.join(SOURCE_FORMATS)})") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InputError(f"the image is too large: it has more than the limit of {MAX_SOURCE_PIXELS} pixels; "
                         "send a smaller one") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"the image is truncated or damaged ({exc})") from None


def target_size(source: tuple[int, int], width: int | None, height: int | None, fit: str) -> tuple[int, int]:
    src_w, src_h = source
    if width is None and height is None:
        scale = min(1.0, MAX_SIDE / src_w, MAX_SIDE / src_h)
        return max(1, round(src_w * scale)), max(1, round(src_h * scale))
    if width is not None and height is not None:
        if fit == "exact":
            return width, height
        scale = min(width / src_w, height / src_h)
        return max(1, round(src_w * scale)), max(1, round(src_h * scale))
    if width is not None:
        size = width, max(1, round(src_h * width / src_w))
    else:
        assert height is not None
        size = max(1, round(src_w * height / src_h)), height
    if max(size) > MAX_SIDE:
        raise InputError(f"keeping the aspect ratio gives {size[0]}×{size[1]}, past {MAX_SIDE} px a side; "
                         "give both width and height")
    return size


def encode(image: Any, fmt: str, quality: int) -> bytes:
    from PIL import Image

    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if fmt == "jpeg":
        if has_alpha:
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
    elif image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    out = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpeg", "webp") else {}
    image.save(out, SAVE_FORMATS[fmt], **options)
    return out.getvalue()


def handle(job: dict[str, Any]) -> None:
    from PIL import Image

    data = base64_field(job, "image_base64")
    fmt = choice_field(job, "format", tuple(SAVE_FORMATS), None)
    width = int_field(job, "width", None, 1, MAX_SIDE)
    height = int_field(job, "height", None, 1, MAX_SIDE)
    fit = choice_field(job, "fit", ("contain", "exact"), "contain")
    quality = int_field(job, "quality", 85, 1, 95)
    assert quality is not None
    emit("status", message="decoding the image")
    image = decode(data)
    size = target_size(image.size, width, height, fit)
    emit("status", message=f"resizing {image.width}×{image.height} to {size[0]}×{size[1]} {fmt}")
    if image.mode in ("P", "1") and size != image.size:
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    encoded = base64.b64encode(encode(image, fmt, quality)).decode("ascii")
    if len(encoded) > MAX_OUTPUT_BASE64:
        raise InputError(f"the resized image is {len(encoded)} bytes in base64, past the limit of "
                         f"{MAX_OUTPUT_BASE64}; ask for a smaller size, or jpeg or webp")
    emit("image", data=encoded, format=fmt, width=size[0], height=size[1])


if __name__ == "__main__":
    serve(handle, MAX_INPUT_BYTES)
