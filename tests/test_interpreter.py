"""The generated runner of every fail-closed plan agrees with the reference interpreter.

``gateway.pipeline.interpret`` runs a plan's rules over plain dicts, one rule at a time, the way a
reader of the policy would; the generated code fuses and inlines the same rules for speed. Over
the five packs, the five simulators' own streams (awkward cases included) and mutated forms of
them, both must forward the same topic and payload or reject for the same reason.
"""

# ruff: noqa: RUF001  (fullwidth and other scripts' characters are what these tests are about)

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.simulate import SYSTEMS
from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward, interpret
from gateway.policy.load import load

ROOT = Path(__file__).resolve().parent.parent
ENGINE = Engine([load(p) for p in sorted((ROOT / "rules").glob("*.toml"))], Keyring.test())
STREAMS = {name: list(itertools.islice(m.messages(devices=20, seed=3), 400)) for name, m in SYSTEMS.items()}


def _outcome(result: Any) -> tuple[Any, ...]:
    if isinstance(result, Forward):
        return ("forward", result.topic, msgspec.json.decode(result.payload))
    return ("reject", result.reason, result.rule)


def _both(topic: str, payload: bytes) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    generated = ENGINE.process(topic, payload, now=1_790_000_000.0)
    if generated.plan is None:
        return None
    entry = ENGINE._routes.get(topic)
    assert entry is not None
    _, upstream, device = entry
    if upstream is None or not generated.plan.structs:
        return None  # no valid upstream topic (rejected before any rule), or already the interpreter
    return _outcome(generated), _outcome(interpret(generated.plan, payload, upstream, device, {}))


@pytest.mark.parametrize("system", sorted(STREAMS))
def test_generated_runner_and_interpreter_agree_on_each_simulator_stream(system: str) -> None:
    compared = 0
    for sample in STREAMS[system]:
        pair = _both(sample.topic, sample.payload)
        if pair is not None:
            compared += 1
            assert pair[0] == pair[1], (sample.topic, sample.awkward)
    assert compared >= 300


_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(
        [
            "4111 1111 1111 1111",
            "203.0.113.77.",
            "asha@example.com",
            "+91 98450 12345",
            "１２.９７１５９８,７７.５９４５６２",
            "358756091234567.0",
        ]
    ),
    st.lists(st.integers(0, 99), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(STREAMS)), st.integers(0, 399), st.data())
def test_they_agree_on_mutated_messages(system: str, index: int, data: st.DataObject) -> None:
    """Change, add or remove one field of a real message: the two still agree."""
    sample = STREAMS[system][index]
    try:
        message = msgspec.json.decode(sample.payload)
    except msgspec.DecodeError:
        return
    if not isinstance(message, dict):
        return
    keys = sorted(message)
    action = data.draw(st.sampled_from(["set", "add", "remove"]))
    if action == "remove" and keys:
        message.pop(data.draw(st.sampled_from(keys)))
    elif action == "set" and keys:
        message[data.draw(st.sampled_from(keys))] = data.draw(_VALUES)
    else:
        message[data.draw(st.text(min_size=1, max_size=8))] = data.draw(_VALUES)
    pair = _both(sample.topic, msgspec.json.encode(message))
    if pair is not None:
        assert pair[0] == pair[1]
