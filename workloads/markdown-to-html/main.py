"""markdown-to-html: CommonMark (plus tables and strikethrough) to HTML with markdown-it-py.

Input  {"markdown": str, "allow_html"?: bool (default false: raw HTML in the text is escaped, not passed on)}
Output {"html": str}
A link to a javascript:, vbscript:, file: or data: (other than an image) URL fails markdown-it's link check and
stays plain text.
"""

from __future__ import annotations

from typing import Any

from workload_io import bool_field, emit, serve, text_field

MAX_INPUT_BYTES = 1024 * 1024
MAX_NESTING = 20


def handle(job: dict[str, Any]) -> dict[str, Any]:
    from markdown_it import MarkdownIt

    text = text_field(job, "markdown", allow_empty=True)
    assert text is not None
    allow_html = bool_field(job, "allow_html", False)
    emit("status", message="rendering")
    parser = MarkdownIt("commonmark", {"html": allow_html, "maxNesting": MAX_NESTING})
    parser.enable(["table", "strikethrough"])
    return {"html": parser.render(text)}


if __name__ == "__main__":
    serve(handle, MAX_INPUT_BYTES)
