"""Request bodies compressed with gzip or deflate (RFC 9110 8.4), decoded within the body limit.

OpenAI's API takes compressed request bodies, and clients that batch many texts through
gateways compress them; Ember refused them all. The limit on the body (EMBER_MAX_BODY_BYTES)
holds for the decoded bytes too, so a small bomb cannot expand past it. A coding Ember cannot
undo (br, zstd) is refused as RFC 9110 15.5.16 says, 415 naming those it can, not as a bad
request: the body may be fine, only its packing is not understood.
"""

from __future__ import annotations

import contextlib
import zlib

from ember.errors import CodingNotSupported, InvalidRequest, PayloadTooLarge

# zlib's wbits for each coding: gzip's header and trailer; "deflate" is the zlib format in
# HTTP, though some clients send raw deflate, tried when the data is not zlib's.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS
DECODED = {"gzip": _GZIP_WBITS, "x-gzip": _GZIP_WBITS, "deflate": _ZLIB_WBITS}
ACCEPTED = ("gzip", "deflate")  # as a 415 advertises them: x-gzip is gzip's old alias


def codings(header: str) -> list[str]:
    """The codings of a Content-Encoding header in the order they were applied, identity left
    out; CodingNotSupported naming the header when one of them cannot be decoded here."""
    applied = [part.strip().lower() for part in header.split(",")]
    applied = [coding for coding in applied if coding not in ("", "identity")]
    if any(coding not in DECODED for coding in applied):
        raise CodingNotSupported(
            f"The request body has Content-Encoding '{header.strip()}'; Ember reads gzip and "
            "deflate bodies, or uncompressed ones.",
            accepted=ACCEPTED,
        )
    return applied


def decode(body: bytes, applied: list[str], limit: int) -> bytes:
    """`body` with each coding undone, last applied first; PayloadTooLarge once the decoded
    bytes pass `limit`, InvalidRequest when they are not what the header says."""
    for coding in reversed(applied):
        body = _inflate(body, coding, limit)
    return body


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    try:
        return _inflate_with(data, DECODED[coding], coding, limit)
    except zlib.error as exc:
        if coding == "deflate":  # no zlib header: raw deflate, which some clients send
            with contextlib.suppress(zlib.error):
                return _inflate_with(data, _RAW_DEFLATE_WBITS, coding, limit)
        raise InvalidRequest(f"The request body is not valid {coding} data: {exc}.") from exc


def _inflate_with(data: bytes, wbits: int, coding: str, limit: int) -> bytes:
    decoded = bytearray()
    while data:  # gzip allows several members, one after the other
        inflater = zlib.decompressobj(wbits=wbits)
        decoded += inflater.decompress(data, limit + 1 - len(decoded))
        if len(decoded) > limit:
            raise PayloadTooLarge(
                f"The request body exceeds {limit} bytes once decompressed (raise it with "
                "EMBER_MAX_BODY_BYTES).",
                param=None,
            )
        if not inflater.eof:
            raise InvalidRequest(f"The request body's {coding} data ends too early.")
        data = inflater.unused_data
    return bytes(decoded)
