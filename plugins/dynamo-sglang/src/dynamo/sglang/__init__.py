"""The SGLang engine plugin for Dynamo (``python -m dynamo.sglang``).

Importing this package is cheap: sglang and torch are imported only when an engine is built or
started (``dynamo.sglang.plugin``'s factory, ``SglangEngine.start``), never here.
"""

__all__: list[str] = []
