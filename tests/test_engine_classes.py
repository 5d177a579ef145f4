"""Issue 9 through the engine with the real packs, other members of two classes: a precise
position in a kept free-form value written as strings or under x/y keys (item 6), and
SmartLocker's access modes written in any case, width or spacing (item 8), which the drop
and the generalisation of ``access.mode`` must read alike.
"""

# ruff: noqa: RUF001  (fullwidth and other scripts' characters are what these tests are about)
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_detect_engine import ALL_PACKS, KEPT_FREE, ids

from gateway.keys import Keyring
from gateway.ops.base import BuildEnv, Epochs
from gateway.ops.basic import Generalise
from gateway.pipeline import Forward, Reject

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("pack, path", KEPT_FREE, ids=ids(KEPT_FREE))
@pytest.mark.parametrize(
    "value",
    [
        {"x": 77.594562, "y": 12.971598},
        {"X": "77.594562", "Y": "12.971598"},
        {"la": 12.971598, "lo": 77.594562},
        {"lat": "12.971598", "lon": "77.594562"},
        {"gps_lat": " 12.9715980 "},
        ["12.971598", "77.594562"],
        ["১২.৯৭১৫৯৮", "৭৭.৫৯৪৫৬২"],  # Bengali digits
        {"track": [{"x": 77.594562, "y": 12.971598}]},
        ["77.594562", 12.971598, "920"],
    ],
)
def test_a_precise_position_as_strings_or_under_x_y_keys_is_a_leak(pack, path, value):
    result = pack.run(pack.with_value(path, value))
    assert isinstance(result, Reject), result
    assert (result.reason, result.detail) in (("leak", "coordinate"), ("too_deep", "")), result  # a small max_depth


@pytest.mark.parametrize("pack, path", KEPT_FREE, ids=ids(KEPT_FREE))
@pytest.mark.parametrize(
    "value",
    [
        {"x": 1.5, "y": 2.25},
        {"x": 12.971598},  # one number is no position
        {"x": 512.123456, "y": 300.654321},  # screen pixels: out of range
        {"lat": "12.97"},
        ["1.5", "2"],
        ["12.971598", "abc"],
        {"x": "left", "y": "top"},
        {"la": "x", "lo": 3},
    ],
)
def test_ordinary_values_under_such_keys_still_pass(pack, path, value):
    result = pack.run(pack.with_value(path, value))
    assert isinstance(result, Forward), result


# -- SmartLocker access modes ------------------------------------------------------------------

LOCKER = next(p for p in ALL_PACKS if p.name == "smartlocker-jenix")
TOPIC = "smartlocker/blr-01/CAB-0042/access"


def _spelled(mode: str):
    """``mode`` in another case, fullwidth, padded, or with a zero-width space inside."""
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in mode)
    return st.sampled_from(
        [mode, mode.upper(), mode.title(), f" {mode} ", f"\t{mode.upper()}\n", fullwidth, f"{mode[0]}\u200b{mode[1:]}"]
    )


@SETTINGS
@given(data=st.data(), mode=st.sampled_from(["card", "qr"]))
def test_a_non_secret_mode_in_any_spelling_is_that_mode(data, mode):
    spelled = data.draw(_spelled(mode))
    result = LOCKER.run({"access": {"mode": spelled, "credential": "04A224B1C3D5E6"}}, topic=TOPIC)
    assert isinstance(result, Forward), result
    body = result.payload.decode()
    assert f'"mode":"{mode}"' in body and "04A224B1C3D5E6" not in body, body


@SETTINGS
@given(data=st.data(), mode=st.sampled_from(["pin", "face", "otp", "keypad", "app"]))
def test_a_secret_or_undeclared_mode_in_any_spelling_drops_the_credential(data, mode):
    spelled = data.draw(_spelled(mode))
    result = LOCKER.run({"access": {"mode": spelled, "credential": "4821"}}, topic=TOPIC)
    assert isinstance(result, Reject) and result.reason == "credential", (spelled, result)


def _build(rule: Generalise):
    return rule.build(BuildEnv(Keyring.test(), Epochs()))


def test_generalise_fold_compares_folded_and_is_off_by_default():
    folded = _build(Generalise(map={"Card": "card", "QR": "qr"}, fold=True))
    assert [folded(v) for v in ["card", " CARD ", "ｃａｒｄ", "q\u200br", "Qr", "pin", 3]] == [
        "card", "card", "card", "qr", "qr", "other", "other",
    ]  # fmt: skip
    exact = _build(Generalise(map={"card": "card"}))
    assert [exact(v) for v in ["card", "Card", " card"]] == ["card", "other", "other"]
    prefix = _build(Generalise(map={"Android": "Android"}, match="prefix", fold=True))
    assert [prefix(v) for v in ["ANDROID 14", " android", "iOS"]] == ["Android", "Android", "other"]


def test_generalise_fold_refuses_keys_that_fold_to_different_values():
    with pytest.raises(ValueError, match="fold"):
        Generalise(map={"card": "card", "CARD": "other"}, fold=True)
    Generalise(map={"card": "card", "CARD": "card"}, fold=True)  # the same value: fine
