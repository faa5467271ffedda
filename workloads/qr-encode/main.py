"""qr-encode: a QR code for a text, as a PNG or SVG image, with segno (pure Python).

Input  {"text": str (at most 2000 characters), "error"?: "l"|"m"|"q"|"h" (default m), "scale"?: 1-40 px per
        module (default 8), "border"?: 0-10 modules (default 4), "format"?: "png"|"svg" (default png)}
Events: status, one image event {data (base64), format, width, height}, done with output {"version", "error",
"width", "height", "format"} (the QR version 1-40 and error level chosen).
"""

from __future__ import annotations

import base64
import io
from typing import Any

from workload_io import InputError, choice_field, emit, int_field, serve, text_field

MAX_INPUT_BYTES = 64 * 1024
MAX_TEXT_CHARS = 2000


def handle(job: dict[str, Any]) -> dict[str, Any]:
    import segno

    text = text_field(job, "text")
    assert text is not None
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"field 'text' has {len(text)} characters; a QR code here holds at most {MAX_TEXT_CHARS}")
    error = choice_field(job, "error", ("l", "m", "q", "h"), "m")
    scale = int_field(job, "scale", 8, 1, 40)
    border = int_field(job, "border", 4, 0, 10)
    fmt = choice_field(job, "format", ("png", "svg"), "png")
    assert scale is not None and border is not None
    emit("status", message="encoding")
    try:
        qr = segno.make_qr(text, error=error, boost_error=False)
    except segno.DataOverflowError:
        raise InputError(f"the text does not fit a QR code at error level {error.upper()}; shorten it or use "
                         "error level l") from None
    width, height = qr.symbol_size(scale=scale, border=border)
    out = io.BytesIO()
    qr.save(out, kind=fmt, scale=scale, border=border)
    emit("image", data=base64.b64encode(out.getvalue()).decode("ascii"), format=fmt, width=width, height=height)
    return {"version": qr.version, "error": qr.error, "width": width, "height": height, "format": fmt}


if __name__ == "__main__":
    serve(handle, MAX_INPUT_BYTES)
