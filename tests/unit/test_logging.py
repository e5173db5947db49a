from __future__ import annotations

import logging

import pytest

from dynamo.runtime.logging import configure_logging, parse_log_spec


def test_plain_level() -> None:
    assert parse_log_spec("debug") == (logging.DEBUG, {})
    assert parse_log_spec("WARN") == (logging.WARNING, {})


def test_per_module_levels_in_rust_log_syntax() -> None:
    root, mods = parse_log_spec("info,dynamo.router=debug,dynamo::frontend=error")
    assert root == logging.INFO
    assert mods == {"dynamo.router": logging.DEBUG, "dynamo.frontend": logging.ERROR}


def test_bare_module_means_everything_from_it() -> None:
    assert parse_log_spec("warn,dynamo.worker") == (logging.WARNING, {"dynamo.worker": logging.DEBUG})


def test_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        parse_log_spec("dynamo=loud")


def test_configure_applies_levels() -> None:
    configure_logging("error,dynamo.router=debug")
    assert logging.getLogger().level == logging.ERROR
    assert logging.getLogger("dynamo.router").level == logging.DEBUG
    configure_logging("info")
