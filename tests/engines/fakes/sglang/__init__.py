"""A fake of SGLang's offline engine API, for tests without a GPU.

Follows **sglang 0.5.21 - 0.5.23** as ``shared/reference/engine-apis.md`` section 2 documents it
(``sglang/srt/entrypoints/engine.py`` @001067f, ``managers/tokenizer_manager.py``,
``server_args.py``, ``sampling/sampling_params.py``):

- ``sglang.Engine(server_args=ServerArgs)`` or ``sglang.Engine(**server_args_fields)``;
- ``ServerArgs.add_cli_args(parser)`` / ``ServerArgs.from_cli_args(namespace)``; the fields keep the
  values given, the resolved ones come from ``server_args.resolved_dict()`` once the engine started;
- ``await engine.async_generate(input_ids=..., sampling_params={...}, stream=True, rid=...)`` returns an
  async iterator of dicts ``{"output_ids", "meta_info"}`` (no ``"text"`` with ``skip_tokenizer_init``);
  ``output_ids`` is cumulative unless ``incremental_streaming_output`` is set, and cumulative
  intermediate chunks share one growing list, as in SGLang;
- ``meta_info["finish_reason"]`` is None or ``{"type": "stop"|"length"|"abort", ...}``; a matched
  stop token id **is** in ``output_ids`` (SGLang trims it only from text); ``ignore_eos`` also disables
  ``stop_token_ids``;
- ``engine.tokenizer_manager.abort_request(rid=..., abort_all=False)`` (sync); closing the stream
  does not abort the request (as in 0.5.21; 0.5.23 aborts it);
- ``engine._scheduler_init_result.scheduler_infos[0]`` holds the capacity (``max_total_num_tokens``,
  ``max_req_input_len``); ``engine.flush_cache()``; ``engine.shutdown()``;
- with ``--kv-events-config '{"publisher": "zmq", ...}'`` the scheduler publishes its prefix cache's
  events (section 2.5): ``BlockStored`` per page (SHA-256-chained, signed int64 hashes, coalesced),
  ``BlockRemoved`` on eviction, ``AllBlocksCleared`` on ``flush_cache``, over SGLang's
  ``ZmqEventPublisher`` (``srt/disaggregation/kv_events.py``: PUB + ROUTER replay, the wire format).

Checked against the real sglang 0.5.23 package by ``tests/engines/test_sglang_fake_parity.py``.

Not modelled: text prompts, tokenizers, logprobs, multimodal inputs, data-parallel ranks, the
``KvMetrics`` socket.
"""

from sglang.srt.entrypoints.engine import Engine
from sglang.version import __version__

__all__ = ["Engine", "__version__"]
