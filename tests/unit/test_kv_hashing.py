"""Block hashing: fixed vectors (Dynamo's scheme: XXH3-64 seed 1337, LE u32 tokens, chained LE u64)."""

from __future__ import annotations

import struct

import pytest
import xxhash
from dynamo.router.hashing import SEED, chain, local_block_hashes, sequence_hashes

#: computed once; any change to the scheme breaks routing against other routers and engines
RANGE_64_BS16 = [15310707395893867146, 13769157705258532664, 11879827756109914528, 3888788807566526800]


def _reference(tokens: list[int], block_size: int) -> list[int]:
    """The scheme written out longhand, independently of the implementation."""
    out: list[int] = []
    for i in range(len(tokens) // block_size):
        block = tokens[i * block_size : (i + 1) * block_size]
        local = xxhash.xxh3_64_intdigest(struct.pack(f"<{block_size}I", *block), seed=1337)
        out.append(
            local if not out else xxhash.xxh3_64_intdigest(struct.pack("<QQ", out[-1], local), seed=1337)
        )
    return out


def test_seed_is_dynamos() -> None:
    assert SEED == 1337


def test_fixed_vectors() -> None:
    assert local_block_hashes(list(range(16)), 16) == [15310707395893867146]
    assert local_block_hashes([0, 0, 0, 0], 4) == [13277122834585657784]
    assert local_block_hashes([1, 2, 3, 4], 4) == [14643705804678351452]
    assert sequence_hashes(list(range(64)), 16) == RANGE_64_BS16
    assert sequence_hashes([100000, 7, 2**32 - 1, 42], 2) == [14208285336954181726, 2357155072673152930]
    assert sequence_hashes(list(range(64)), 64) == [3480597578098033343]


@pytest.mark.parametrize("block_size", [1, 2, 16, 64])
def test_matches_the_longhand_scheme(block_size: int) -> None:
    tokens = [(i * 7919) % 150_000 for i in range(300)]
    assert sequence_hashes(tokens, block_size) == _reference(tokens, block_size)


def test_trailing_partial_block_is_ignored() -> None:
    assert sequence_hashes(list(range(40)), 16) == RANGE_64_BS16[:2]
    assert sequence_hashes(list(range(15)), 16) == []
    assert sequence_hashes([], 16) == []


def test_first_block_sequence_hash_is_its_local_hash() -> None:
    tokens = list(range(16))
    assert sequence_hashes(tokens, 16) == local_block_hashes(tokens, 16)


def test_chain_continues_from_a_parent() -> None:
    tokens = list(range(64))
    whole = sequence_hashes(tokens, 16)
    tail = sequence_hashes(tokens[32:], 16, parent=whole[1])
    assert tail == whole[2:]
    assert chain(local_block_hashes(tokens, 16)) == whole


def test_sequence_hash_depends_on_the_prefix_local_hash_does_not() -> None:
    a = [1] * 16 + [2] * 16
    b = [3] * 16 + [2] * 16
    assert local_block_hashes(a, 16)[1] == local_block_hashes(b, 16)[1]
    assert sequence_hashes(a, 16)[1] != sequence_hashes(b, 16)[1]


def test_tokens_must_fit_u32_and_block_size_be_positive() -> None:
    with pytest.raises(OverflowError):
        local_block_hashes([2**32], 1)
    with pytest.raises(ValueError):
        local_block_hashes([1, 2], 0)
