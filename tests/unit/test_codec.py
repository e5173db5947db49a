from __future__ import annotations

import msgspec
import pytest

from dynamo.plugin.types import Delta, FinishReason, GenerateRequest, Usage
from dynamo.runtime.transport import codec
from dynamo.runtime.transport.codec import FrameReader, Kind


def test_frames_survive_arbitrary_splits() -> None:
    deltas = [Delta([i, i + 1]) for i in range(50)] + [Delta([], FinishReason.LENGTH, Usage(prompt_tokens=3))]
    wire = b"".join(codec.delta_frame(7, d) for d in deltas) + codec.frame(Kind.END, 7)
    for chunk in (1, 3, 17, len(wire)):
        reader = FrameReader()
        frames = []
        for i in range(0, len(wire), chunk):
            frames += reader.feed(wire[i : i + chunk])
        assert [k for k, _, _ in frames] == [Kind.TOKENS] * (len(deltas) - 1) + [Kind.DATA, Kind.END]
        decoded = [Delta(codec.decode_tokens(p)) if k == Kind.TOKENS else codec.decode_delta(p)
                   for k, _, p in frames if k != Kind.END]
        assert decoded == deltas
        assert {sid for _, sid, _ in frames} == {7}


def test_one_token_delta_is_a_few_bytes() -> None:
    assert len(codec.delta_frame(1, Delta([1234]))) == codec.HEADER_SIZE + 4  # [1234] is 4 bytes of msgpack


def test_oversized_frame_is_rejected() -> None:
    reader = FrameReader()
    with pytest.raises(ValueError):
        reader.feed(codec.HEADER.pack(codec.MAX_FRAME + 1, Kind.DATA, 1))


def test_decoding_tolerates_fields_from_newer_peers() -> None:
    newer = msgspec.msgpack.encode([[5, 6], "length", None, None, None, "a future field"])
    assert codec.decode_delta(newer) == Delta([5, 6], FinishReason.LENGTH)
    req = msgspec.msgpack.encode({"endpoint": "generate", "request": {"request_id": "r", "token_ids": [1],
                                                                      "new_field": {"x": 1}}, "extra": 1})
    env = codec.decode_envelope(req)
    assert env.request == GenerateRequest(request_id="r", token_ids=[1])
