"""The environment self-check: ``python -m dynamo.check`` / ``dynamo check``.

Tells a user, before they start anything, what would stop the frontend or a worker on this
machine: a Python too old, a plugin without its engine library, no GPU for a GPU engine, etcd or
NATS not answering, a port taken, a model directory without a tokenizer. Each finding is one line
(ok / warning / error / skip) with the fix; the exit status is 1 when any error remains.

It must stay cheap and side-effect free: it never imports an engine library or torch, never starts
a server, and writes nothing but a temporary file to test the discovery directory.
"""

from dynamo.check.report import Report, Result, Status
from dynamo.check.run import run_checks

__all__ = ["Report", "Result", "Status", "run_checks"]
