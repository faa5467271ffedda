"""json-format: checks a JSON text and pretty-prints or minifies it, with the standard library.

Input  {"json": str, "indent"?: 0-8 (default 2; 0 minifies), "sort_keys"?: bool (default false),
        "ascii"?: bool (default false: keep non-ASCII characters as they are)}
Output {"formatted": str, "valid": true, "type": "object"|"array"|"string"|"number"|"boolean"|"null",
        "bytes_in": int, "bytes_out": int}
Text that is not JSON is an error event that says where (line and column) and why.
"""

from __future__ import annotations

import json
from typing import Any

from workload_io import InputError, bool_field, emit, int_field, serve, text_field

MAX_INPUT_BYTES = 2 * 1024 * 1024
TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
         type(None): "null"}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def handle(job: dict[str, Any]) -> dict[str, Any]:
    text = text_field(job, "json")
    assert text is not None
    indent = int_field(job, "indent", 2, 0, 8)
    sort_keys = bool_field(job, "sort_keys", False)
    ascii_only = bool_field(job, "ascii", False)
    emit("status", message="parsing")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InputError(f"the text is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") \
            from None
    except (ValueError, RecursionError) as exc:
        raise InputError(f"the text is not valid JSON: {exc if isinstance(exc, ValueError) else 'nested too deeply'}") \
            from None
    try:
        formatted = json.dumps(document, indent=indent or None, sort_keys=sort_keys, ensure_ascii=ascii_only,
                               separators=(",", ":") if not indent else None)
    except RecursionError:
        raise InputError("the JSON is nested too deeply to format") from None
    return {"formatted": formatted, "valid": True, "type": TYPES[type(document)],
            "bytes_in": len(text.encode()), "bytes_out": len(formatted.encode())}


if __name__ == "__main__":
    serve(handle, MAX_INPUT_BYTES)
