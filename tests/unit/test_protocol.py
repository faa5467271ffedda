from __future__ import annotations

import json

import pytest

from archipelag.errors import ProtocolViolation
from archipelag.protocol import collect_output, parse_line, to_api_event, validate


@pytest.mark.parametrize("line", [
    '{"type": "status", "message": "loading"}',
    '{"type": "token", "content": "hi"}',
    '{"type": "progress", "step": 1, "total": 4}',
    '{"type": "image", "data": "AAA=", "format": "png", "width": 8, "height": 8}',
    '{"type": "done"}',
    '{"type": "done", "usage": {"prompt_tokens": 3, "completion_tokens": 5}, "output": {"a": 1}, "seed": 7}',
    '{"type": "error", "message": "bad input"}',
])
def test_valid_events_parse(line: str) -> None:
    assert parse_line(line) == json.loads(line)


@pytest.mark.parametrize("line,fragment", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": "telepathy"}', "unknown event type"),
    ('{"content": "x"}', "unknown event type"),
    ('{"type": "token"}', "missing field 'content'"),
    ('{"type": "token", "content": 5}', "wrong type"),
    ('{"type": "progress", "step": true, "total": 2}', "wrong type"),
    ('{"type": "done", "usage": {"prompt_tokens": "3"}}', "usage.prompt_tokens"),
])
def test_malformed_lines_say_what_is_wrong(line: str, fragment: str) -> None:
    with pytest.raises(ProtocolViolation, match=fragment):
        parse_line(line)


def test_bytes_that_are_not_utf8_are_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation):
        parse_line(b"\xff\xfe{")


def test_api_form_renames_image_data_and_error() -> None:
    image = validate({"type": "image", "data": "QQ==", "format": "png", "width": 1, "height": 1, "seq": 3})
    assert to_api_event(image) == {"type": "image", "image_data": "QQ==", "format": "png", "width": 1,
                                   "height": 1, "seq": 3}
    assert to_api_event({"type": "error", "message": "boom", "code": "x"}) == {"type": "error", "error": "boom",
                                                                               "code": "x"}


def test_output_is_tokens_joined_or_done_output() -> None:
    assert collect_output([{"type": "token", "content": "a"}, {"type": "token", "content": "b"},
                           {"type": "done"}]) == "ab"
    assert collect_output([{"type": "done", "output": {"sha256": "x"}}]) == '{"sha256": "x"}'
    assert collect_output([{"type": "done", "output": "text"}]) == "text"
    assert collect_output([{"type": "error", "message": "no"}]) is None
