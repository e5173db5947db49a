"""Block hashing: how the router names the KV blocks of a prompt.

A prompt is cut into blocks of ``block_size`` tokens; a trailing partial block is ignored (engines
cache only full blocks). Each block gets:

- a *local* hash: XXH3-64 (seed 1337) over its token ids as little-endian u32, which depends on
  the block's content only;
- a *sequence* hash, chained: the first block's equals its local hash, every later one is XXH3-64
  (seed 1337) over the parent's sequence hash and the block's local hash, as two little-endian
  u64. A sequence hash therefore names a whole prefix, which is what a prefix cache can reuse.

This is NVIDIA Dynamo's scheme, so the numbers match its router's. Engines publish their own ids
for blocks; the router never relies on them for content, only on these hashes of the tokens.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Sequence

import xxhash

__all__ = ["SEED", "local_block_hashes", "sequence_hashes", "chain", "num_full_blocks"]

SEED = 1337

_xxh3 = xxhash.xxh3_64_intdigest
_pair = struct.Struct("<QQ").pack


def _le_u32(tokens: Sequence[int]) -> bytes:
    data = array("I", tokens)
    if sys.byteorder == "big":  # pragma: no cover - the wire format is little-endian everywhere
        data.byteswap()
    return data.tobytes()


def num_full_blocks(num_tokens: int, block_size: int) -> int:
    return num_tokens // block_size


def local_block_hashes(tokens: Sequence[int], block_size: int) -> list[int]:
    """The local (content) hash of every full block of ``tokens``."""
    if block_size <= 0:
        raise ValueError(f"block size must be positive, got {block_size}")
    n = len(tokens) // block_size
    if n == 0:
        return []
    data = memoryview(_le_u32(tokens[: n * block_size]))
    width = 4 * block_size
    return [_xxh3(data[i : i + width], SEED) for i in range(0, n * width, width)]


def chain(local_hashes: Sequence[int], parent: int | None = None) -> list[int]:
    """Sequence hashes of blocks with these local hashes, following block ``parent`` (if any)."""
    out: list[int] = []
    append = out.append
    for local in local_hashes:
        parent = local if parent is None else _xxh3(_pair(parent, local), SEED)
        append(parent)
    return out


def sequence_hashes(tokens: Sequence[int], block_size: int, parent: int | None = None) -> list[int]:
    """The chained sequence hash of every full block of ``tokens`` (the router's block names)."""
    return chain(local_block_hashes(tokens, block_size), parent)
