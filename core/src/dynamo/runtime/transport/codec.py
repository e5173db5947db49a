"""The request plane's binary frames.

A connection starts with the 4-byte preamble ``b"DYN" + version``. Then every frame is::

    u32 length (big-endian, counts what follows) | u8 kind | u32 stream id | payload

Payloads are msgpack (msgspec, typed). Per-token frames are a few bytes: a delta that carries
only token ids travels as a TOKENS frame holding just the msgpack list of ids; any other delta
(finish reason, usage, log-probabilities) as a DATA frame holding the array-like ``Delta``.
"""

from __future__ import annotations

import enum
import struct

import msgspec

from dynamo.plugin.types import Delta, GenerateRequest

VERSION = 1
PREAMBLE = b"DYN" + bytes([VERSION])
HEADER = struct.Struct(">IBI")  # length, kind, stream id
HEADER_SIZE = HEADER.size
LENGTH_SIZE = 4
#: largest frame accepted (a prompt of 32 MB of token ids is far beyond any context length)
MAX_FRAME = 32 * 1024 * 1024


class Kind(enum.IntEnum):
    REQUEST = 1  # client -> server: RequestEnvelope
    CANCEL = 2  # client -> server: stop this stream (no payload)
    DATA = 3  # server -> client: Delta
    END = 4  # server -> client: end of stream (no payload)
    ERROR = 5  # server -> client: ErrorPayload; ends the stream
    TOKENS = 6  # server -> client: list[int], a Delta with token ids only


class RequestEnvelope(msgspec.Struct, omit_defaults=True, kw_only=True):
    endpoint: str
    request: GenerateRequest
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class ErrorPayload(msgspec.Struct, array_like=True):
    code: str
    message: str


_encoder = msgspec.msgpack.Encoder()
encode_payload = _encoder.encode
decode_envelope = msgspec.msgpack.Decoder(RequestEnvelope).decode
decode_delta = msgspec.msgpack.Decoder(Delta).decode
decode_tokens = msgspec.msgpack.Decoder(list[int]).decode
decode_error = msgspec.msgpack.Decoder(ErrorPayload).decode
_pack = HEADER.pack


def frame(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _pack(len(payload) + 5, kind, stream_id) + payload


def delta_frame(stream_id: int, delta: Delta) -> bytes:
    """The smallest frame for ``delta`` (the per-token hot path)."""
    if delta.finish_reason is None and delta.usage is None and delta.logprobs is None:
        body = _encoder.encode(delta.token_ids)
        return _pack(len(body) + 5, 6, stream_id) + body
    body = _encoder.encode(delta)
    return _pack(len(body) + 5, 3, stream_id) + body


class FrameReader:
    """Accumulates bytes and yields complete ``(kind, stream_id, payload)`` frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        frames: list[tuple[int, int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            length, kind, stream_id = HEADER.unpack_from(buf, pos)
            if length > MAX_FRAME or length < 5:
                raise ValueError(f"invalid frame length {length}")
            stop = pos + LENGTH_SIZE + length
            if stop > end:
                break
            frames.append((kind, stream_id, bytes(buf[pos + HEADER_SIZE : stop])))
            pos = stop
        if pos:
            del buf[:pos]
        return frames
