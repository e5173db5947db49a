"""Build a tiny random-weight Llama model directory locally: no download, a few MB, a few seconds.

    from tests.engines.tiny_llama import build_tiny_llama
    model_dir = build_tiny_llama(cache_root)      # builds once, then returns the cached directory

    python tests/engines/tiny_llama.py DEST       # the same from a shell

What it makes (see shared/reference/vllm-cpu.md for why these numbers):
- a byte-level BPE tokenizer (vocab 2048) trained with ``tokenizers`` on this Python's own standard
  library source files, with ChatML-style special tokens and a small Jinja chat template in
  ``tokenizer_config.json`` (the same conventions as the mocker's default model);
- ``LlamaForCausalLM`` with hidden 128, 2 heads of dim 64 (the CPU attention kernels reject head_dim
  16), 1 KV head, 2 layers, random weights from a fixed seed, saved as safetensors.

Needs ``tokenizers``, ``transformers`` and ``torch``: run it inside ``.venv-vllm``.
The build is deterministic for a given Python stdlib and library versions; the result is cached under
``dest_dir`` and rebuilt only when the recipe (``RECIPE_VERSION``) changes. Building into a temporary
sibling and renaming makes concurrent builders safe.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

RECIPE_VERSION = "1"
MARKER = ".tiny-llama-complete"
NAME = "tiny-llama"

VOCAB_SIZE = 2048
BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
SPECIALS = [BOS, "<|im_start|>", EOS, PAD]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MODEL = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,  # head_dim = 128 / 2 = 64
    num_key_value_heads=1,
    max_position_embeddings=2048,
)
SEED = 1234
MAX_CORPUS_FILES = 400


def _corpus() -> list[str]:
    """Python source files of the standard library: present on every machine that runs Python."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())[:MAX_CORPUS_FILES]
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in files]
    if len(texts) < 20:
        raise RuntimeError(f"too little training text for the tokenizer under {root}")
    return texts


def _build_tokenizer(dest: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (dest / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2) + "\n"
    )
    return tok.get_vocab_size()


def _build_weights(dest: Path, vocab_size: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens = json.loads((dest / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in tokens}
    config = LlamaConfig(
        vocab_size=vocab_size,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
        **MODEL,
    )
    torch.manual_seed(SEED)
    with torch.no_grad():
        model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(dest))  # safetensors
    # config.json's dtype entry differs between transformers 4 ("torch_dtype") and 5 ("dtype")
    cfg = json.loads((dest / "config.json").read_text())
    cfg["torch_dtype"] = "float32"
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (dest / "generation_config.json").write_text(
        json.dumps({"bos_token_id": ids[BOS], "eos_token_id": [ids[EOS]]}, indent=2) + "\n"
    )
    if not any(dest.glob("*.safetensors")):
        raise RuntimeError(f"no safetensors weights written to {dest}")


def build_tiny_llama(dest_dir: str | os.PathLike[str]) -> Path:
    """Return ``dest_dir/tiny-llama`` with a complete model, building it first if needed."""
    root = Path(dest_dir)
    out = root / NAME
    marker = out / MARKER
    if marker.is_file() and marker.read_text().strip() == RECIPE_VERSION:
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=root))
    tmp.chmod(0o755)
    try:
        vocab = _build_tokenizer(tmp)
        _build_weights(tmp, vocab)
        (tmp / MARKER).write_text(RECIPE_VERSION + "\n")
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:
            # a concurrent builder won the race; its result is as good as ours
            if not (marker.is_file() and marker.read_text().strip() == RECIPE_VERSION):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    dest = sys.argv[1] if len(sys.argv) > 1 else ".cache/models"
    print(build_tiny_llama(dest))
