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

#: exact-text tokenization cache: entries, and the longest text worth keeping
CACHE_ENTRIES = 1024
CACHE_MAX_TEXT = 64 * 1024


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
        #: whether the template renders a ``tools`` variable (else tool definitions would be lost)
        self.supports_tools = bool(self.chat_template and "tools" in self.chat_template)
        self._token_texts: dict[int, str] = {}
        self._cache: dict[str, list[int]] = {}

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
        """Render ``messages`` (and ``tools``, ``chat_template_kwargs``) for generation.

        Any failure inside the template is the request's fault (a template raising on a role order
        it does not support, a kwarg of the wrong type): it is a 400, never a 500.
        """
        if self._template is None:
            raise InvalidRequest(
                f"model at {self.path} has no chat template; use /v1/completions", param="messages"
            )
        variables = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "", **kwargs}
        variables.update(messages=messages, add_generation_prompt=True)
        try:
            return self._template.render(**variables)
        except TemplateError as exc:
            raise InvalidRequest(f"chat template failed: {exc}", param="messages") from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
            raise InvalidRequest(f"chat template failed: {type(exc).__name__}: {exc}", param="messages") from None

    def token_text(self, token_id: int) -> str:
        """The text of one token, as log-probabilities show it (cached: the vocabulary is finite)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; repeated texts (system prompts, retries, multi-turn) hit a cache."""
        cache = self._cache
        ids = cache.get(text)
        if ids is None:
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            if len(text) <= CACHE_MAX_TEXT:
                if len(cache) >= CACHE_ENTRIES:
                    del cache[next(iter(cache))]  # oldest first
                cache[text] = ids
        else:
            cache[text] = cache.pop(text)  # most recently used last
        return list(ids)

    def encode_prompt(self, text: str) -> list[int]:
        """Tokenize a raw completion prompt, with the tokenizer's own special tokens (e.g. BOS)."""
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


@lru_cache(maxsize=32)
def load_preprocessor(model_path: str) -> Preprocessor:
    return Preprocessor(model_path)
