"""What is particular to the acme engine: its model, its flags, its plugin registration."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from acme_engine.model import Bigrams
from dynamo.plugin import (
    EngineContext,
    FinishReason,
    GenerateRequest,
    SamplingOptions,
    StopConditions,
    errors,
    plugin_manager,
)
from dynamo.plugin.testing import collect, tokens


def test_greedy_echoes_the_prompt_round_and_round() -> None:
    model = Bigrams([5, 6, 7])
    out = []
    for _ in range(7):
        out.append(model.next_token())
        model.append(out[-1])
    assert out == [5, 6, 7, 5, 6, 7, 5]


def test_greedy_takes_the_most_frequent_follower_then_the_latest() -> None:
    assert Bigrams([1, 2, 1, 2, 1, 3, 1]).next_token() == 2  # 2 followed 1 twice, 3 once
    assert Bigrams([1, 2, 1, 3, 1]).next_token() == 3  # a tie: the latest


def test_sampling_draws_only_followers() -> None:
    model = Bigrams([1, 2, 1, 3, 1])
    rng = random.Random(0)
    assert {model.next_token(rng) for _ in range(50)} == {2, 3}


def build(*argv: str, model_path: str | None = "/models/tiny"):  # type: ignore[no-untyped-def]
    return plugin_manager().get("acme").factory(EngineContext(argv=list(argv), model_path=model_path))


def test_flags() -> None:
    engine = build("--context-length", "64", "--step-ms", "2.5")
    cfg = engine.config  # type: ignore[attr-defined]
    assert (cfg.context_length, cfg.step_s, cfg.served_model_name, cfg.kv_block_size) == (
        64,
        0.0025,
        "tiny",
        16,
    )


@pytest.mark.parametrize(
    "argv, model_path, match",
    [(["--no-such-flag"], "/m", "invalid acme flags"), ([], None, "--model-path"),
     (["--context-length", "1"], "/m", "context-length")],
    ids=["unknown-flag", "no-model", "bad-value"],
)  # fmt: skip
def test_bad_flags_are_a_plugin_error(argv: list[str], model_path: str | None, match: str) -> None:
    with pytest.raises(errors.PluginError, match=match):
        build(*argv, model_path=model_path)


async def test_stop_and_eos_ids_end_without_the_token() -> None:
    engine = build("--context-length", "64")
    await engine.start()
    ask = lambda **stop: GenerateRequest(  # noqa: E731
        request_id="r", token_ids=[5, 6, 7, 8], eos_token_ids=[7], stop=StopConditions(max_tokens=6, **stop)
    )
    deltas = await collect(engine, ask(), 5)
    assert tokens(deltas) == [5, 6] and deltas[-1].finish_reason == FinishReason.EOS
    deltas = await collect(engine, ask(ignore_eos=True, stop_token_ids=[8]), 5)
    assert tokens(deltas) == [5, 6, 7] and deltas[-1].finish_reason == FinishReason.STOP
    deltas = await collect(engine, ask(ignore_eos=True), 5)
    assert tokens(deltas) == [5, 6, 7, 8, 5, 6] and deltas[-1].finish_reason == FinishReason.LENGTH
    await engine.aclose()


async def test_sampled_requests_repeat_with_a_seed() -> None:
    engine = build("--context-length", "64")
    await engine.start()
    prompt = [1, 2, 1, 3, 1, 4, 2, 3]
    ask = lambda: GenerateRequest(  # noqa: E731
        request_id="s",
        token_ids=prompt,
        sampling=SamplingOptions(temperature=1.0, seed=7),
        stop=StopConditions(max_tokens=20),
    )
    first, second = tokens(await collect(engine, ask(), 5)), tokens(await collect(engine, ask(), 5))
    assert first == second and set(first) <= set(prompt)
    await engine.aclose()


def test_found_through_the_entry_point_and_cheap_to_list() -> None:
    code = (
        "import sys; from dynamo.plugin import plugin_manager; spec = plugin_manager().get('acme'); "
        "print(spec.plugin, 'acme_engine.engine' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["acme-dynamo-engine", "False"]
