from tensorrt_llm.llmapi.llm import LLM, RequestOutput
from tensorrt_llm.llmapi.llm_args import KvCacheConfig, SchedulerConfig, TorchLlmArgs
from tensorrt_llm.sampling_params import SamplingParams

__all__ = ["LLM", "RequestOutput", "KvCacheConfig", "SchedulerConfig", "TorchLlmArgs", "SamplingParams"]
