"""The worker host: ``python -m dynamo.worker --engine NAME``."""
