"""Acme's n-gram engine for Dynamo: a third-party engine plugin, in its own top-level package.

Dynamo finds it through the entry point ``acme = "acme_engine.plugin"`` in the group ``dynamo``
(see ``pyproject.toml``); nothing of it lives under ``dynamo.*``. Importing this package is cheap.
"""

__version__ = "0.1.0"
