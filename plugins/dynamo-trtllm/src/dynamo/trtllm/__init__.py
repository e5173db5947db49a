"""The TensorRT-LLM engine plugin for Dynamo (``python -m dynamo.trtllm``).

Importing this package is cheap: tensorrt_llm and torch are imported only when an engine is built or
started (``dynamo.trtllm.plugin``'s factory, ``TrtllmEngine.start``), never here.
"""

__all__: list[str] = []
