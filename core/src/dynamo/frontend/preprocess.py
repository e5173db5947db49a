"""Preprocessing: chat template and tokenization, from the model directory in the model card.

Uses HF ``tokenizers`` for tokenization and renders ``chat_template`` (from
``tokenizer_config.json`` or ``chat_template.jinja``) in a sandboxed Jinja environment the way HF
``transformers`` does, without importing transformers.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from dynamo.plugin.errors import InvalidRequest

log = logging.getLogger(__name__)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _raise(message: str) -> None:
    raise TemplateError(message)


class Preprocessor:
    """Turns chat messages or prompts into token ids for one model directory."""

    def __init__(self, model_path: str | Path) -> None:
        path = Path(model_path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json")
        self.path = path
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tok_cfg = _read_json(path / "tokenizer_config.json")
        self.bos_token = _token_text(tok_cfg.get("bos_token"))
        self.eos_token = _token_text(tok_cfg.get("eos_token"))
        self.chat_template = self._load_template(path, tok_cfg)
        self.eos_token_ids = self._eos_ids(path)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda v, indent=None, **_: json.dumps(v, indent=indent, ensure_ascii=False)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(self.chat_template) if self.chat_template else None

    @staticmethod
    def _load_template(path: Path, tok_cfg: dict[str, Any]) -> str | None:
        jinja_file = path / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text()
        template = tok_cfg.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) else None

    def _eos_ids(self, path: Path) -> list[int]:
        for source in (_read_json(path / "generation_config.json"), _read_json(path / "config.json")):
            eos = source.get("eos_token_id")
            if isinstance(eos, int):
                return [eos]
            if isinstance(eos, list) and eos:
                return [int(e) for e in eos]
        if self.eos_token is not None:
            tid = self.tokenizer.token_to_id(self.eos_token)
            if tid is not None:
                return [tid]
        return []

    def render_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        if self._template is None:
            raise InvalidRequest(
                f"model at {self.path} has no chat template; use /v1/completions", param="messages"
            )
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "", **kwargs,
            )
        except TemplateError as exc:
            raise InvalidRequest(f"chat template failed: {exc}", param="messages") from exc

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """Tokenize a raw completion prompt, with the tokenizer's own special tokens (e.g. BOS)."""
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


@lru_cache(maxsize=32)
def load_preprocessor(model_path: str) -> Preprocessor:
    return Preprocessor(model_path)
