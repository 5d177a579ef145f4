"""Policy mistakes are refused at load time, and the guard covers topics and odd names."""

from __future__ import annotations

import msgspec
import pytest

from gateway.cli import main
from gateway.keys import Keyring
from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.load import PolicyError, loads

HEAD = """
[policy]
name = "t"
version = "1"
{extra}
[route]
topics = ["dev/{{d}}/x"]
upstream = "up/{{d}}"
[route.capture.d]
{capture}
"""


def policy(fields: str = "", capture: str = 'op = "pseudonymise"', extra: str = "", tail: str = "") -> bytes:
    return (HEAD.format(extra=extra, capture=capture) + fields + tail).encode()


def engine(data: bytes) -> Engine:
    return Engine([loads(data, "t.toml")], Keyring.test(), unknown_sample=1)


def run(data: bytes, payload: dict, topic: str = "dev/abc/x") -> Forward | Reject:
    return engine(data).process(topic, msgspec.json.encode(payload))


def test_a_kept_topic_level_passes_the_leak_guard():
    data = policy(capture='op = "keep"')
    assert run(data, {}, "dev/plain-name/x").topic == "up/plain-name"
    leak = run(data, {}, "dev/490154203237518/x")
    assert isinstance(leak, Reject) and (leak.reason, leak.rule, leak.detail) == ("leak", "route.capture.d", "imei")


def test_wildcards_do_not_match_dollar_topics():
    data = policy().replace(b'topics = ["dev/{d}/x"]', b'topics = ["{d}/x", "+/{d}/#"]')
    eng = engine(data)
    assert eng.process("$SYS/broker/x", b"{}") == Reject("no_route")
    assert eng.process("$SYS/x", b"{}") == Reject("no_route")
    assert isinstance(eng.process("dev/x", b"{}"), Forward)


@pytest.mark.parametrize("upstream", ["up/{D}", "up/{}", "up/x{", "up/x}"])
def test_stray_braces_in_the_upstream_template_are_refused(upstream):
    with pytest.raises(PolicyError, match="braces"):
        engine(policy().replace(b'upstream = "up/{d}"', f'upstream = "{upstream}"'.encode()))


def test_an_integer_constant_that_looks_like_an_imei_is_refused():
    with pytest.raises(PolicyError, match="imei"):
        engine(policy('[[field]]\npath = "x"\nop = "replace"\nvalue = 490154203237518\n'))


def test_capture_constants_must_be_topic_levels():
    with pytest.raises(PolicyError, match="topic level"):
        engine(policy(capture='op = "replace"\nvalue = "a/b"'))


def test_consent_without_a_device_is_refused():
    rule = '[[field]]\nop = "coarsen_location"\nlat = "lat"\nlon = "lon"\ndecimals = 2\nconsent = "precise"\n'
    with pytest.raises(PolicyError, match="device"):
        engine(policy(rule))


def test_a_drop_reason_may_not_reuse_a_built_in_reason():
    with pytest.raises(PolicyError, match="built-in"):
        engine(policy('[[drop_when]]\npath = "pin"\npresent = true\nreason = "leak"\n'))


def test_coordinates_under_prefixed_names_are_checked_and_guard_allow_does_not_disable_it():
    every = '["secret", "email", "upi_vpa", "ip", "card", "imei", "utr", "phone"]'
    data = policy(f'[[field]]\npath = "gps_lat"\nop = "keep"\nguard_allow = {every}\n')
    leak = run(data, {"gps_lat": 12.9715})
    assert (leak.reason, leak.rule, leak.detail) == ("leak", "gps_lat", "coordinate")
    assert isinstance(run(data, {"gps_lat": 12.97}), Forward)  # 3 decimals is the default allowance


def test_required_drop_field_is_enforced():
    data = policy('[[field]]\npath = "sig"\nop = "drop"\nrequired = true\n')
    assert run(data, {}).reason == "missing_field"
    assert run(data, {"sig": "x"}).payload == b"{}"


def test_tiny_steps_keep_their_precision():
    data = policy('[[field]]\npath = "v"\nop = "round"\nstep = 0.00001\n')
    assert msgspec.json.decode(run(data, {"v": 1.234567}).payload) == {"v": 1.23457}


def test_null_in_an_optional_array_is_a_wrong_type_not_a_missing_field():
    data = policy('[[field]]\npath = "tags[]"\nop = "keep"\ntype = "string"\n')
    assert run(data, {"tags": ["a", None]}).reason == "wrong_type"


def test_inline_tests_compare_types_exactly(tmp_path, capsys):
    test = '[[test]]\ntopic = "dev/a/x"\ninput = { n = 1 }\nexpect = { n = 1.0 }\n'
    path = tmp_path / "p.toml"
    path.write_bytes(policy('[[field]]\npath = "n"\nop = "keep"\n', tail=test))
    assert main(["check", str(path)]) == 1
    assert "output differs" in capsys.readouterr().err


@pytest.mark.parametrize("now", ["yesterday", "2026-01-15T12:00:00"])
def test_inline_test_time_needs_a_zone(tmp_path, capsys, now):
    test = f'[[test]]\ntopic = "dev/a/x"\ninput = {{}}\nexpect = {{}}\nnow = "{now}"\n'
    path = tmp_path / "p.toml"
    path.write_bytes(policy(tail=test))
    assert main(["check", str(path)]) == 2
    assert "zone" in capsys.readouterr().err


def test_with_the_guard_off_kept_objects_are_only_depth_checked():
    data = policy('[[field]]\npath = "cfg"\nop = "keep"\ntype = "object"\n', extra="leak_guard = false\nmax_depth = 3")
    assert msgspec.json.decode(run(data, {"cfg": {"lat": 12.345678}}).payload) == {"cfg": {"lat": 12.345678}}
    assert run(data, {"cfg": {"a": {"b": {"c": 1}}}}).reason == "too_deep"


def test_subscription_filter_replaces_captures_with_plus():
    from gateway.policy.topics import TopicFilter

    assert TopicFilter("smartlocker/{site}/{cabinet}/#").subscription == "smartlocker/+/+/#"
