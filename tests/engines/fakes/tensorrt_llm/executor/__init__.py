from tensorrt_llm.executor.result import CompletionOutput, GenerationResult, IterationResult

__all__ = ["CompletionOutput", "GenerationResult", "IterationResult"]
