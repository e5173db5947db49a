"""A fake of TensorRT-LLM's LLM API (PyTorch backend), for tests without a GPU.

Follows **tensorrt-llm 1.2 / 1.3.0rc** as ``shared/reference/engine-apis.md`` section 3 documents it
(``tensorrt_llm/llmapi/llm.py`` @4c05a74, ``executor/result.py``, ``llmapi/llm_args.py``):

- ``LLM(model, tokenizer=None, ..., skip_tokenizer_init=False, tensor_parallel_size=1, **kwargs)``;
  kwargs are checked against the ``TorchLlmArgs`` fields (an unknown one raises ``ValueError``);
  ``kv_cache_config`` is a ``KvCacheConfig`` (``tokens_per_block`` 32 by default);
- ``llm.generate_async(ids, sampling_params=SamplingParams(...), streaming=True)`` is a plain method
  that returns a ``RequestOutput`` at once; ``async for out in result`` yields the same object,
  updated; ``out.outputs[0].token_ids`` is **cumulative**; ``finish_reason`` is one of ``stop``,
  ``length``, ``timeout``, ``cancelled``; a stop token id ends the sequence as ``stop`` with
  ``stop_reason`` set to it and is trimmed from ``token_ids`` (``include_stop_str_in_output=False``);
  ``ignore_eos`` ignores only the end id;
- ``result.abort()`` on the handle (there is no abort by id); the stream then finishes ``cancelled``;
- ``llm.get_stats_async(timeout)`` iterates per-iteration stats dicts (camelCase keys) when
  ``enable_iter_perf_stats=True``, and stops after ``timeout`` seconds without one;
- ``generate_async`` raises ``RuntimeError("LLM is shutting down")`` after ``llm.shutdown()``;
- ``llm.get_kv_cache_events_async(timeout)`` iterates KV cache event dicts (section 3.5: ``created``,
  ``stored`` with blocks of tokens, ``removed``; consecutive ``event_id``s) when ``kv_cache_config``
  has ``event_buffer_max_size > 0`` and ``enable_block_reuse`` (``executor/kv_cache.py``).

Not modelled: text prompts and detokenization, logprobs, beam search, n > 1, disaggregated params,
``updated`` KV events (priorities, host offload), TensorRT-LLM's own block hash, multi-GPU.
"""

from tensorrt_llm.llmapi.llm import LLM, RequestOutput
from tensorrt_llm.sampling_params import SamplingParams
from tensorrt_llm.version import __version__

__all__ = ["LLM", "RequestOutput", "SamplingParams", "__version__"]
