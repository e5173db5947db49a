"""Fake ``sglang.srt.disaggregation.kv_events``: KV-cache event structs and the ZMQ publisher.

The structs are SGLang 0.5.23's (``EventBatch`` a positional array ``[ts, events, attn_dp_rank]``,
events tagged maps with ``type`` = the class name, ``None`` fields omitted). The publisher is its
``ZmqEventPublisher``, as ``shared/reference/engine-apis.md`` section 2.5 describes it: a PUB socket
that binds wildcard, ``ipc://`` and ``inproc://`` endpoints (connects otherwise), three-frame
messages ``(topic, seq as 8-byte big-endian, msgpack(batch))`` with ``seq`` counting from 0, an
optional ROUTER replay socket answering a start seq with the buffered ``(topic, seq, payload)`` frames
and an ``END_SEQ`` of -1, the port offset by the data-parallel rank, and a publisher thread fed by a
queue. ``KVEventsConfig`` parses ``--kv-events-config`` (``publisher`` defaults to ``"null"``).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from itertools import count
from typing import Any, Optional, Union

import msgspec
from pydantic import BaseModel


class EventBatch(msgspec.Struct, array_like=True, gc=False):  # type: ignore[call-arg]
    ts: float
    events: list[Any]
    attn_dp_rank: Optional[int] = None  # noqa: UP045 (msgspec reads the annotation as SGLang writes it)


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):  # type: ignore[call-arg]
    """Base class of the events: tagged msgpack maps, ``type`` = the class name."""


class BlockStored(KVCacheEvent):
    block_hashes: list[int]
    parent_block_hash: Optional[int]  # noqa: UP045
    token_ids: list[int]
    block_size: int
    lora_id: Optional[int]  # noqa: UP045
    medium: Optional[str] = None  # noqa: UP045
    cache_salt: Optional[str] = None  # noqa: UP045
    session_id: Optional[str] = None  # noqa: UP045
    lora_name: Optional[str] = None  # noqa: UP045


class BlockRemoved(KVCacheEvent):
    block_hashes: list[int]
    medium: Optional[str] = None  # noqa: UP045


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[Union[BlockStored, BlockRemoved, AllBlocksCleared]]  # noqa: UP007


class NullEventPublisher:
    def publish(self, events: EventBatch) -> None:
        return

    def shutdown(self) -> None:
        return


class ZmqEventPublisher:
    END_SEQ = (-1).to_bytes(8, "big", signed=True)

    def __init__(
        self,
        attn_dp_rank: int,
        endpoint: str = "tcp://*:5557",
        replay_endpoint: str | None = None,
        buffer_steps: int = 10_000,
        hwm: int = 100_000,
        max_queue_size: int = 100_000,
        topic: str = "",
        bind: bool | None = None,
    ) -> None:
        import zmq  # (SGLang imports it with the module; here only tests that publish need pyzmq)

        self._event_queue: queue.Queue[EventBatch | None] = queue.Queue(maxsize=max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._ctx = zmq.Context.instance()
        self._dp_rank = attn_dp_rank
        self._endpoint = self.offset_endpoint_port(endpoint, attn_dp_rank)
        self._replay_endpoint = self.offset_endpoint_port(replay_endpoint, attn_dp_rank)
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(hwm)
        should_bind = bind
        if should_bind is None:
            should_bind = (
                "*" in self._endpoint
                or "::" in self._endpoint
                or "0.0.0.0" in self._endpoint
                or self._endpoint.startswith(("ipc://", "inproc://"))
            )
        if should_bind:
            self._pub.bind(self._endpoint)
        else:
            self._pub.connect(self._endpoint)
        self._replay = None
        if self._replay_endpoint is not None:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.bind(self._replay_endpoint)
        self._seq_gen = count()
        self._topic_bytes = topic.encode("utf-8")
        self._running = True
        #: test hook: the next batch is lost on the PUB socket (it stays in the replay buffer)
        self.fake_drop_next = False
        self._thread = threading.Thread(target=self._publisher_thread, daemon=True, name="zmq-publisher")
        self._thread.start()

    def publish(self, events: EventBatch) -> None:
        if not self._running:
            raise RuntimeError("Publisher is closed")
        if events.attn_dp_rank is None:
            events.attn_dp_rank = self._dp_rank
        self._event_queue.put(events)

    def shutdown(self) -> None:
        self._running = False
        self._event_queue.put_nowait(None)
        self._thread.join(timeout=1.0)
        self._pub.close(linger=0)  # the context is shared (zmq.Context.instance()): not terminated
        if self._replay is not None:
            self._replay.close(linger=0)

    def _publisher_thread(self) -> None:
        pack = msgspec.msgpack.Encoder()
        while self._running or self._event_queue.qsize() > 0:
            if self._replay is not None and self._replay.poll(0):  # zmq's poll, no import needed
                self._service_replay()
            try:
                event = self._event_queue.get(timeout=0.01)
            except queue.Empty:
                continue
            if event is None:
                break
            seq = next(self._seq_gen)
            payload = pack.encode(event)
            if not self.fake_drop_next:
                self._pub.send_multipart((self._topic_bytes, seq.to_bytes(8, "big"), payload))
            self.fake_drop_next = False
            self._buffer.append((seq, payload))

    def _service_replay(self) -> None:
        assert self._replay is not None
        frame = self._replay.recv_multipart()
        if len(frame) != 3:
            return
        client_id, _, start_seq_bytes = frame
        start_seq = int.from_bytes(start_seq_bytes, "big")
        for seq, buf in self._buffer:
            if seq >= start_seq:
                self._replay.send_multipart((client_id, b"", self._topic_bytes, seq.to_bytes(8, "big"), buf))
        self._replay.send_multipart((client_id, b"", b"", self.END_SEQ, b""))

    @staticmethod
    def offset_endpoint_port(endpoint: str | None, data_parallel_rank: int) -> str | None:
        if not endpoint or data_parallel_rank == 0:
            return endpoint
        if "inproc" in endpoint:
            return f"{endpoint}_dp{data_parallel_rank}"
        if "tcp" in endpoint:
            base, _, port = endpoint.rpartition(":")
            return f"{base}:{int(port) + data_parallel_rank}"
        raise ValueError("Invalid endpoint: must contain 'inproc' or 'tcp'")


class KVEventsConfig(BaseModel):
    publisher: str = "null"
    endpoint: str = "tcp://*:5557"
    bind: Optional[bool] = None  # noqa: UP045
    replay_endpoint: Optional[str] = None  # noqa: UP045
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    @classmethod
    def from_cli(cls, cli_value: str) -> KVEventsConfig:
        return KVEventsConfig.model_validate_json(cli_value)


class EventPublisherFactory:
    @classmethod
    def create(cls, config: str | None, attn_dp_rank: int = 0) -> Any:
        if not config:
            return NullEventPublisher()
        fields = KVEventsConfig.from_cli(config).model_dump()
        kind = fields.pop("publisher", "null")
        if kind == "null":
            return NullEventPublisher()
        if kind != "zmq":
            raise ValueError(f"Unknown event publisher '{kind}'")
        return ZmqEventPublisher(attn_dp_rank=attn_dp_rank, **fields)
