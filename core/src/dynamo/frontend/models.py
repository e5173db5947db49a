"""The frontend's live view of models and workers, built from discovery.

A worker is routable once both its instance record and its model card are known; it stops being
routable as soon as either vanishes. Models are keyed by served name; ``/v1/models`` lists those
with at least one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from dynamo.frontend.preprocess import Preprocessor, load_preprocessor
from dynamo.plugin.errors import ModelNotFound, NoWorkersAvailable
from dynamo.router.base import Router, Worker
from dynamo.runtime import records
from dynamo.runtime.discovery import Discovery, EventKind, WatchEvent

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ModelEntry:
    name: str
    card: records.ModelCard
    router: Router
    workers: dict[int, Worker] = field(default_factory=dict)
    preprocessor: Preprocessor | None = None
    created: int = 0
    _list: list[Worker] = field(default_factory=list)

    def worker_list(self) -> list[Worker]:
        return self._list

    def _refresh(self) -> None:
        self._list = list(self.workers.values())

    def ready_preprocessor(self) -> Preprocessor:
        if self.preprocessor is None:
            raise NoWorkersAvailable(f"model {self.name!r} is still loading its tokenizer", retry_after=1)
        return self.preprocessor


class ModelRegistry:
    def __init__(self, discovery: Discovery, namespace: str, router_factory: Callable[[records.ModelCard], Router],
                 on_worker_removed: Callable[[Worker], None] | None = None) -> None:
        self.discovery = discovery
        self.namespace = namespace
        self.router_factory = router_factory
        self.on_worker_removed = on_worker_removed
        self.models: dict[str, ModelEntry] = {}
        self._instances: dict[int, records.InstanceRecord] = {}
        self._cards: dict[int, records.ModelCard] = {}
        self._where: dict[int, str] = {}  # instance id -> model name
        self._tasks: list[asyncio.Task[None]] = []
        self.changed = asyncio.Event()

    async def start(self) -> None:
        ns = self.namespace
        self._tasks = [
            asyncio.create_task(self._watch(records.namespace_prefix(records.INSTANCES, ns), self._on_instance)),
            asyncio.create_task(self._watch(records.namespace_prefix(records.MODEL_CARDS, ns), self._on_card)),
        ]

    async def _watch(self, prefix: str, handle: Callable[[WatchEvent], None]) -> None:
        while True:
            try:
                async for event in self.discovery.watch(prefix):
                    try:
                        handle(event)
                    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                        log.warning("ignoring malformed discovery record %s: %s", event.key, exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("discovery watch on %s failed; restarting", prefix)
                await asyncio.sleep(1)

    @staticmethod
    def _id_from_key(key: str) -> int:
        return int(key.rsplit("/", 1)[1], 16)

    def _on_instance(self, event: WatchEvent) -> None:
        iid = self._id_from_key(event.key)
        if event.kind is EventKind.DELETE:
            self._instances.pop(iid, None)
        else:
            self._instances[iid] = records.decode_instance(event.value)
        self._update(iid)

    def _on_card(self, event: WatchEvent) -> None:
        iid = self._id_from_key(event.key)
        if event.kind is EventKind.DELETE:
            self._cards.pop(iid, None)
        else:
            self._cards[iid] = records.decode_model_card(event.value)
        self._update(iid)

    def _update(self, iid: int) -> None:
        record, card = self._instances.get(iid), self._cards.get(iid)
        current = self._where.get(iid)
        if record is None or card is None or (current is not None and current != card.display_name):
            self._remove(iid)
            if record is None or card is None:
                return
        entry = self.models.get(card.display_name)
        if entry is None:
            entry = self._new_model(card)
        elif not self._compatible(entry, card, iid):
            return
        worker = entry.workers.get(iid)
        if worker is None:
            worker = Worker(iid, record, card)
            entry.workers[iid] = worker
            entry.router.add_worker(worker)
            log.info("worker %x joined model %r (%d workers)", iid, entry.name, len(entry.workers))
        else:
            worker.record, worker.card = record, card
        self._where[iid] = entry.name
        entry._refresh()
        self.changed.set()

    def _compatible(self, entry: ModelEntry, card: records.ModelCard, iid: int) -> bool:
        ref = entry.card
        if card.kv_cache_block_size != ref.kv_cache_block_size:
            log.error(
                "worker %x serves model %r with KV block size %d but other workers use %d; not routing to it",
                iid, card.display_name, card.kv_cache_block_size, ref.kv_cache_block_size,
            )
            return False
        return True

    def _new_model(self, card: records.ModelCard) -> ModelEntry:
        import time

        entry = ModelEntry(card.display_name, card, self.router_factory(card), created=int(time.time()))
        self.models[card.display_name] = entry
        asyncio.get_running_loop().create_task(self._load_preprocessor(entry))
        log.info("model %r discovered (engine %s, path %s)", card.display_name, card.engine, card.model_path)
        return entry

    async def _load_preprocessor(self, entry: ModelEntry) -> None:
        try:
            entry.preprocessor = await asyncio.to_thread(load_preprocessor, entry.card.model_path)
        except Exception as exc:
            log.error("model %r: cannot load tokenizer from %s: %s", entry.name, entry.card.model_path, exc)

    def _remove(self, iid: int) -> None:
        name = self._where.pop(iid, None)
        if name is None:
            return
        entry = self.models.get(name)
        if entry is None:
            return
        worker = entry.workers.pop(iid, None)
        entry.router.remove_worker(iid)
        entry._refresh()
        if worker is not None:
            log.info("worker %x left model %r (%d workers)", iid, name, len(entry.workers))
            if self.on_worker_removed is not None:
                self.on_worker_removed(worker)
        if not entry.workers:
            del self.models[name]
        self.changed.set()

    def get(self, name: str) -> ModelEntry:
        entry = self.models.get(name)
        if entry is None:
            available = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(f"model {name!r} is not served here (available: {available})", param="model")
        return entry

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for entry in self.models.values():
            await entry.router.aclose()
