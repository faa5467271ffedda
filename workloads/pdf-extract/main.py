"""pdf-extract: the text and document metadata of a PDF, with pypdf.

Input  {"pdf_base64": str, "password"?: str, "max_pages"?: int}
Output {"text": str, "pages": int, "pages_read": int, "truncated": bool, "unreadable_pages": [int],
        "metadata": {"title", "author", "subject", "keywords", "creator", "producer", "created", "modified",
                     "pdf_version", "encrypted"}}
Events: status, progress (per page, at most ~100), done. Bad input → one error event.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from workload_io import InputError, base64_field, emit, int_field, serve, text_field

MAX_INPUT_BYTES = 24 * 1024 * 1024  # ~18 MB of PDF once base64-decoded
MAX_PAGES = 2000
MAX_TEXT_BYTES = 2 * 1024 * 1024  # keeps the done line well under the runtime's line limit
PROGRESS_EVENTS = 100


def open_pdf(data: bytes, password: str | None) -> Any:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError, PdfStreamError

    if b"%PDF-" not in data[:1024]:
        raise InputError("pdf_base64 does not hold a PDF: there is no %PDF- header in its first 1024 bytes")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(password or ""):
            raise InputError("the PDF is encrypted; send its password in 'password'" if password is None
                             else "the PDF is encrypted and 'password' does not open it")
        page_count = len(reader.pages)
    except (DependencyError, NotImplementedError) as exc:
        raise InputError(f"the PDF uses encryption this workload cannot open ({exc})") from None
    except FileNotDecryptedError:
        raise InputError("the PDF is encrypted; send its password in 'password'") from None
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"the PDF is damaged and cannot be read ({type(exc).__name__}: {exc})") from None
    return reader, page_count


def metadata_of(reader: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"pdf_version": reader.pdf_header.lstrip("%").replace("PDF-", "") or None,
                            "encrypted": bool(reader.is_encrypted)}
    try:
        meta = reader.metadata
    except Exception:  # noqa: BLE001 - a broken info dictionary is no reason to lose the text
        meta = None
    for key, attribute in (("title", "title"), ("author", "author"), ("subject", "subject"),
                           ("creator", "creator"), ("producer", "producer")):
        info[key] = _text(getattr(meta, attribute, None)) if meta is not None else None
    info["keywords"] = _text(meta.get("/Keywords")) if meta is not None else None
    for key, attribute, raw in (("created", "creation_date", "/CreationDate"),
                                ("modified", "modification_date", "/ModDate")):
        info[key] = None
        if meta is None:
            continue
        try:
            value = getattr(meta, attribute)
            info[key] = value.isoformat() if value is not None else None
        except Exception:  # noqa: BLE001 - a malformed date: keep the raw string
            info[key] = _text(meta.get(raw))
    return info


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text or None


def handle(job: dict[str, Any]) -> dict[str, Any]:
    data = base64_field(job, "pdf_base64")
    password = text_field(job, "password", required=False, allow_empty=True)
    max_pages = int_field(job, "max_pages", MAX_PAGES, 1, MAX_PAGES)
    assert max_pages is not None
    emit("status", message="opening the PDF")
    reader, page_count = open_pdf(data, password)
    wanted = min(page_count, max_pages)
    emit("status", message=f"extracting text from {wanted} of {page_count} pages")
    texts: list[str] = []
    unreadable: list[int] = []
    size = 0
    truncated = wanted < page_count
    every = max(1, -(-wanted // PROGRESS_EVENTS))
    for index in range(wanted):
        try:
            text = reader.pages[index].extract_text() or ""
        except Exception:  # noqa: BLE001 - one malformed page content stream must not lose the others
            unreadable.append(index + 1)
            text = ""
        encoded = text.encode("utf-8", "replace")
        if size + len(encoded) > MAX_TEXT_BYTES:
            texts.append(encoded[:MAX_TEXT_BYTES - size].decode("utf-8", "ignore"))
            truncated = True
            emit("progress", step=index + 1, total=wanted)
            break
        texts.append(text)
        size += len(encoded) + 2
        if (index + 1) % every == 0 or index + 1 == wanted:
            emit("progress", step=index + 1, total=wanted)
    return {"text": "\n\n".join(texts).replace("\x00", ""), "pages": page_count, "pages_read": len(texts),
            "truncated": truncated, "unreadable_pages": unreadable, "metadata": metadata_of(reader)}


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)  # pypdf's warnings about sloppy PDFs go to stderr, quietly
    serve(handle, MAX_INPUT_BYTES)
