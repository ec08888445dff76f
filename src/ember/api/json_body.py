"""Request bodies as JSON: orjson for speed, Python's json for what orjson refuses but clients send.

orjson refuses two things real clients send. A lone UTF-16 surrogate escape (`"\\ud83d"`):
JavaScript's JSON.stringify writes one for a string cut in the middle of an emoji, as text
chunkers in JS apps do (the OpenAI Node SDK sends it as is). OpenAI embeds such text; tiktoken
turns each lone surrogate into U+FFFD, and so does Ember. And a leading UTF-8 byte order mark,
which Windows tools write (PowerShell 5's UTF8 encoding, Notepad): RFC 8259 lets a parser ignore it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from ember.errors import InvalidRequest

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads pairs the valid ones


def parse_json_body(body: bytes) -> Any:
    """The body's JSON value; InvalidRequest naming the problem when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        refused = exc
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid UTF-8: byte 0x{exc.object[exc.start]:02x} at "
            f"offset {exc.start}. Send JSON encoded as UTF-8."
        ) from exc
    try:
        return _without_lone_surrogates(json.loads(text, parse_constant=_not_json))
    except ValueError as exc:  # this names the first fault past any lone surrogate
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from exc
    except RecursionError:  # nesting orjson refused too
        raise InvalidRequest(f"The request body is not valid JSON: {refused}.") from refused


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _without_lone_surrogates(value: Any) -> Any:
    """Every string in `value` with lone surrogates replaced by U+FFFD (they cannot be
    encoded as UTF-8, which the tokenizer and the JSON of any answer need)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            _without_lone_surrogates(key): _without_lone_surrogates(item)
            for key, item in value.items()
        }
    return value
