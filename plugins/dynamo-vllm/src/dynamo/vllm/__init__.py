"""The vLLM engine plugin for Dynamo (``python -m dynamo.vllm``).

Importing this package is cheap: vllm and torch are imported only when an engine is built
(``dynamo.vllm.plugin``'s factory), never here.
"""

__all__: list[str] = []
