# ruff: noqa: RUF001 - fullwidth and other-script digits are the point of several cases
"""Identity promises through the real packs, the engine and the CLI (issue 9, items 7, 8, 9, 12).

- Affixes: ``keep_prefix`` / ``keep_after`` keep a part in clear only of a value with the declared
  shape; every other value (a phone as an IMEI, a phone after the "@", a UPI deep link, an e-mail)
  keeps nothing, in the payload and in the topic. Canaries: no run of 4+ digits of the input, and
  no other piece of it, reaches the output.
- Modes: a credential leaves the site only with a mode declared non-secret, compared normalised.
- Domain separation: keys per pack (and per field for encryption) unless a link domain is declared;
  expected values come from tests/reference.py (HKDF) and hmac/AES-SIV, not from the code under test.
- Keys and URLs: refused with an error naming the file or key, never the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat
import subprocess
import sys
import unicodedata
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import hkdf_sha256

from gateway.keys import KeyFileError, Keyring, keygen
from gateway.ops.identity import reveal
from gateway.pipeline import Engine, Forward, Reject
from gateway.policy.load import PolicyError, load, loads
from gateway.service.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
GATEWAY = str(Path(sys.executable).parent / "gateway")
TEST_SECRET = b"gateway-inline-test-key-public!!"
NOW = 1_768_478_400.0  # 2026-01-15T12:00:00Z
IMEI = "358756091234562"  # Luhn-valid
PHONE = "+919876543210"


def pack(name: str) -> Engine:
    return Engine([load(RULES / f"{name}.toml")], Keyring.test(), now=NOW, unknown_sample=1)


def send(engine: Engine, topic: str, payload: dict) -> Forward | Reject:
    return engine.process(topic, json.dumps(payload).encode(), now=NOW)


def pseudonym(value: str, scope: str, domain: str, rotate: str = "never", epoch: str = "0", length: int = 16) -> str:
    key = hkdf_sha256(TEST_SECRET, f"telemetry-gateway/v1|pseudonymise|{scope}|{domain}|{rotate}|{epoch}".encode())
    return "test." + base64.b32encode(hmac.new(key, value.encode(), hashlib.sha256).digest()).decode().lower()[:length]


def decrypt(token: str) -> str:
    _, _, label, domain, data = token.split(".")
    scope = label if label.startswith("link:") else f"pack:{label}"
    key = hkdf_sha256(TEST_SECRET, f"telemetry-gateway/v1|encrypt|{scope}|{domain}|aes-siv".encode(), 64)
    return AESSIV(key).decrypt(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)), None).decode()


def digits_of(text: str) -> str:
    """Every Unicode decimal digit as its ASCII value, anything else a space."""
    return "".join(str(d) if (d := unicodedata.decimal(ch, None)) is not None else " " for ch in text)


def digit_runs(text: str, n: int = 4) -> set[str]:
    digits = digits_of(text)
    return {m for run in digits.split() for m in (run[i:i + n] for i in range(len(run) - n + 1))}


def assert_nothing_of(value: str, res: Forward) -> None:
    """No 4-digit run and no 5-letter piece of ``value`` in the forwarded topic or payload."""
    out = res.topic + "\n" + res.payload.decode()
    leaked = {r for r in digit_runs(value) if r in digits_of(out)}
    assert not leaked, (value, out)
    words = {w.lower() for w in re.findall(r"[^\W\d_]{5,}", value)} - {"okaxis"}
    assert not {w for w in words if w in out.lower()}, (value, out)


# -- 7. affixes ------------------------------------------------------------------------------

NOT_IMEIS = [
    "9876543210", "+919876543210", "919876543210", "358756091234567",  # bad check digit
    "３５８７５６０９１２３４５６２", "٣٥٨٧٥٦٠٩١٢٣٤٥٦٢", "358 756 091 234 562", "35875609123456２",
    "3587560912345620", "35875609123456", "asha.rao@example.com", "98765-43210",
]


@pytest.mark.parametrize("value", NOT_IMEIS)
def test_tracksolid_keeps_no_prefix_of_what_is_not_an_imei_in_payload_or_topic(value):
    eng = pack("jimi-tracksolid")
    topic_level = value if "/" not in value and "+" not in value else "dev1"
    res = send(eng, f"tracksolid/{topic_level}/heartbeat", {"imei": value})
    assert isinstance(res, Forward), res
    out = json.loads(res.payload)
    assert out["imei"] == pseudonym(value, "pack:jimi-tracksolid", "device")  # whole, no prefix
    assert res.topic == f"fleet/tracksolid/{pseudonym(topic_level, 'pack:jimi-tracksolid', 'device')}/heartbeat"
    assert_nothing_of(value, res)


def test_tracksolid_keeps_the_tac_of_a_real_imei_only():
    eng = pack("jimi-tracksolid")
    for imei in [IMEI, "490154203237518", int("490154203237518")]:
        res = send(eng, f"tracksolid/{imei}/heartbeat", {"imei": imei})
        token = f"{str(imei)[:8]}-{pseudonym(str(imei), 'pack:jimi-tracksolid', 'device')}"
        assert json.loads(res.payload)["imei"] == token
        assert res.topic == f"fleet/tracksolid/{token}/heartbeat"
        assert str(imei)[8:] not in res.topic + res.payload.decode()


NOT_VPAS = [
    "okaxis@9876543210", "upi://pay?pa=asha@okaxis&pn=Asha%20Rao&tn=call%20+919876543210",
    "asha.rao@example.com", "asha@unknownbank", "a@b@okaxis", "asha@okaxis ", "asha@OK-AXIS",
    "asha@ｏｋａｘｉｓ", "9876543210@okaxis9876", "asha@okaxis\n9876543210", "9876543210", "@okaxis",
    "asha%40okaxis", "asha\u200b@okaxis.com",
]


@pytest.mark.parametrize("value", NOT_VPAS)
def test_smartlocker_keeps_no_handle_of_what_is_not_a_plain_vpa(value):
    res = send(pack("smartlocker-jenix"), "smartlocker/blr-01/CAB-0042/payment", {"payment": {"payer_vpa": value}})
    assert isinstance(res, Forward), res
    vpa = json.loads(res.payload)["payment"]["payer_vpa"]
    assert vpa == pseudonym(value, "pack:smartlocker-jenix", "payer", "monthly", "2026-01")
    assert "@" not in vpa
    assert_nothing_of(value, res)


@pytest.mark.parametrize("value", ["9876543210@okaxis", "asha.rao@ybl", "Asha-R_9@OKSBI", "x@upi"])
def test_smartlocker_keeps_a_known_handle_of_a_plain_vpa(value):
    res = send(pack("smartlocker-jenix"), "smartlocker/blr-01/CAB-0042/payment", {"payment": {"payer_vpa": value}})
    vpa = json.loads(res.payload)["payment"]["payer_vpa"]
    handle = value.rsplit("@", 1)[1]
    assert vpa == pseudonym(value, "pack:smartlocker-jenix", "payer", "monthly", "2026-01") + "@" + handle
    assert value.rsplit("@", 1)[0] not in res.payload.decode()


REJECTING = """
[policy]
name = "affix-reject"
version = "1"

[route]
topics = ["dev/{imei}/up"]
upstream = "cloud/{imei}/up"

[route.capture.imei]
op = "pseudonymise"
domain = "device"
keep_prefix = 8
shape = "imei"
on_mismatch = "reject"

[[field]]
path = "imei"
op = "pseudonymise"
domain = "device"
keep_prefix = 8
shape = "imei"
on_mismatch = "reject"

[[field]]
path = "owner"
op = "pseudonymise"
keep_after = "@"
pattern = "[a-z]+@[a-z]+"
on_mismatch = "reject"
"""


def test_on_mismatch_reject_rejects_the_message_in_payload_and_topic_without_the_value():
    eng = Engine([loads(REJECTING.encode(), "r.toml")], Keyring.test(), now=NOW)
    plan = eng.plans[0]
    ok = send(eng, f"dev/{IMEI}/up", {"imei": IMEI, "owner": "asha@example"})
    assert isinstance(ok, Forward) and json.loads(ok.payload)["imei"].startswith("35875609-")
    for value in NOT_IMEIS[:4]:
        res = send(eng, f"dev/{IMEI}/up", {"imei": value})
        assert isinstance(res, Reject) and (res.reason, res.rule) == ("bad_shape", "imei"), res
        assert value not in repr(res)
        res = send(eng, f"dev/{value}/up", {"imei": IMEI})
        assert isinstance(res, Reject) and (res.reason, res.rule) == ("bad_shape", "route.capture.imei"), res
        assert value not in repr(res)
    res = send(eng, f"dev/{IMEI}/up", {"owner": "asha@example.com"})
    assert (res.reason, res.rule) == ("bad_shape", "owner")
    assert plan.stats[("imei", "bad_shape")] == 4 and plan.stats[("owner", "bad_shape")] == 1
    # the rejection is not cached as a pseudonym: the same value is rejected again
    assert send(eng, f"dev/{IMEI}/up", {"imei": NOT_IMEIS[0]}).reason == "bad_shape"


DEFAULT_SHAPES = """
[policy]
name = "defaults"
version = "1"

[route]
topics = ["dev/{imei}/up"]
upstream = "cloud/{imei}/up"

[route.capture.imei]
op = "pseudonymise"
keep_prefix = 8

[[field]]
path = "imei"
op = "pseudonymise"
keep_prefix = 8

[[field]]
path = "vpa"
op = "pseudonymise"
keep_after = "@"
"""


@pytest.mark.parametrize("value", NOT_IMEIS[:6] + NOT_VPAS[:3] + NOT_VPAS[4:6])  # any letters handle is a VPA here
def test_an_affix_without_a_declared_shape_gets_the_fail_closed_default(value):
    eng = Engine([loads(DEFAULT_SHAPES.encode(), "d.toml")], Keyring.test(), now=NOW)
    level = value if re.fullmatch(r"[^/+#]+", value) else "x"
    res = send(eng, f"dev/{level}/up", {"imei": value, "vpa": value})
    assert isinstance(res, Forward), res
    out = json.loads(res.payload)
    whole = pseudonym(value, "pack:defaults", "default")
    assert out == {"imei": whole, "vpa": whole}
    assert res.topic == f"cloud/{pseudonym(level, 'pack:defaults', 'default')}/up"
    assert_nothing_of(value, res)
    ok = send(eng, f"dev/{IMEI}/up", {"imei": IMEI, "vpa": "asha@okaxis"})
    assert json.loads(ok.payload)["imei"].startswith("35875609-") and ok.topic.startswith("cloud/35875609-")
    assert json.loads(ok.payload)["vpa"].endswith("@okaxis")


@pytest.mark.parametrize(
    "rule",
    [
        'keep_prefix = 12', 'keep_after = "-"', 'keep_prefix = 12\nshape = "imei"', 'keep_after = "@"\nshape = "imei"',
        'shape = "vpa"', 'keep_after = "@"\nshape = "vpa"\nhandles = ["OK AXIS"]',
    ],
)
def test_an_affix_without_a_fitting_shape_is_a_policy_error(rule):
    text = f'[policy]\nname = "x"\nversion = "1"\n[route]\ntopics = ["a/b"]\nupstream = "c"\n' \
           f'[[field]]\npath = "v"\nop = "pseudonymise"\n{rule}\n'
    with pytest.raises(PolicyError):
        Engine([loads(text.encode(), "x.toml")], Keyring.test())


phone_digits = st.text(alphabet="0123456789", min_size=8, max_size=14)
separators = st.sampled_from(["", " ", "-", ".", "\u00a0", "\u200b", "@", "@okaxis", "@9", "+91"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=st.sampled_from(["", "+", "tel:", "asha", "okaxis@", "upi://pay?pa="]), digits=phone_digits,
       sep=separators, tail=st.text(max_size=6))
def test_property_no_digit_run_of_a_non_imei_non_vpa_survives(head, digits, sep, tail):
    value = f"{head}{digits}{sep}{tail}"
    eng = PROPERTY_PACKS
    for topic, payload in (("tracksolid/x/heartbeat", {"imei": value}),
                           ("smartlocker/blr-01/CAB-0042/payment", {"payment": {"payer_vpa": value}})):
        res = eng.process(topic, json.dumps(payload).encode(), now=NOW)
        assert isinstance(res, Forward), res
        out = res.payload.decode()
        kept = out.split("-test.")[0] if "-test." in out else ""
        if kept:  # only a real IMEI keeps its first 8 digits
            assert re.fullmatch(r'\{"imei":"\d{8}', kept) and len(value) == 15
        if "@" in json.loads(out).get("payment", {}).get("payer_vpa", ""):
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*@[a-z]+", value)
        rest = out.replace(kept, "")
        assert not digit_runs(value, 4) & digit_runs(rest, 4) - digit_runs("2026", 4)


PROPERTY_PACKS = Engine([load(RULES / "jimi-tracksolid.toml"), load(RULES / "smartlocker-jenix.toml")],
                        Keyring.test(), now=NOW)


# -- 8. credentials by mode --------------------------------------------------------------------

SECRET_MODES = ["pin", "PIN", " Pin ", "ＰＩＮ", "p\u200bin", "face", "FACE", "keypad", "otp", "OTP", "app", "api",
                "pin-code", "", None, 1, True, ["card"], {"m": "card"}]
CANARY_PIN = "739281"


@pytest.mark.parametrize("mode", SECRET_MODES, ids=repr)
def test_a_credential_with_any_undeclared_mode_drops_the_message(mode):
    access = {"credential": CANARY_PIN} if mode is None else {"mode": mode, "credential": CANARY_PIN}
    res = send(pack("smartlocker-jenix"), "smartlocker/blr-01/CAB-0042/access", {"locker_id": 3, "access": access})
    assert isinstance(res, Reject), res
    assert res.reason in ("credential", "wrong_type")
    assert CANARY_PIN not in repr(res)


KEEP_MODE = """
[policy]
name = "modes"
version = "1"
default = "keep"

[route]
topics = ["door/+/access"]
upstream = "cloud/access"

[[drop_when]]
path = "access.credential"
present = true
unless = { path = "access.mode", one_of = ["card", "qr"] }
reason = "credential"

[[field]]
path = "access.credential"
op = "pseudonymise"
"""


@pytest.mark.parametrize("default", ["keep", "drop"])
def test_unless_is_an_allow_list_in_both_default_modes(default):
    text = KEEP_MODE.replace('default = "keep"', f'default = "{default}"')
    eng = Engine([loads(text.encode(), "m.toml")], Keyring.test(), now=NOW)
    for mode, dropped in [("QR", False), (" card", False), ("Ｑ\u00a0R", False), ("pin", True), ("", True),
                          (None, True), (7, True), ("cards", True)]:
        res = send(eng, "door/d1/access", {"access": {"mode": mode, "credential": CANARY_PIN}})
        assert isinstance(res, Reject) == dropped, (mode, res)
        if dropped:
            assert (res.reason, res.rule) == ("credential", "access.credential")
        else:
            assert CANARY_PIN not in res.payload.decode()
    res = send(eng, "door/d1/access", {"access": {"credential": CANARY_PIN}})
    assert isinstance(res, Reject) and res.reason == "credential"
    assert isinstance(send(eng, "door/d1/access", {"access": {"mode": "pin"}}), Forward)  # no credential


def test_a_credential_without_mode_or_with_missing_access_mode_key_drops():
    eng = pack("smartlocker-jenix")
    for access in ({"credential": CANARY_PIN}, {"mode": None, "credential": CANARY_PIN}):
        res = send(eng, "smartlocker/blr-01/CAB-0042/access", {"access": access})
        assert isinstance(res, Reject) and res.reason == "credential", (access, res)


@pytest.mark.parametrize("mode", ["card", "CARD", " Card ", "qr", "QR", "Q R", "ｑｒ", "q\u200br", "Card\t"])
def test_a_credential_leaves_only_with_a_declared_non_secret_mode(mode):
    res = send(pack("smartlocker-jenix"), "smartlocker/blr-01/CAB-0042/access",
               {"access": {"mode": mode, "credential": "04A224B1C3D5E6"}})
    assert isinstance(res, Forward), res
    out = json.loads(res.payload)["access"]
    assert out["credential"] == pseudonym("04A224B1C3D5E6", "pack:smartlocker-jenix", "credential")
    assert "04A224B1C3D5E6" not in res.payload.decode()


@pytest.mark.parametrize("mode", ["app", "APP", "nfc-phone", None])
def test_an_access_event_without_a_credential_still_passes(mode):
    access = {} if mode is None else {"mode": mode}
    res = send(pack("smartlocker-jenix"), "smartlocker/blr-01/CAB-0042/access", {"locker_id": 3, "access": access})
    assert isinstance(res, Forward), res


def test_the_mode_allow_list_holds_through_the_cli():
    lines = [json.dumps({"topic": "smartlocker/blr-01/CAB-0042/access",
                         "payload": {"access": {"mode": m, "credential": CANARY_PIN}}}) for m in ("PIN", "otp", "qr")]
    r = subprocess.run([GATEWAY, "minimise", "--test-keys", "--policy", str(RULES / "smartlocker-jenix.toml")],
                       input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert [json.loads(x)["reason"] for x in r.stderr.splitlines()] == ["credential", "credential"]
    assert len(r.stdout.splitlines()) == 1 and CANARY_PIN not in r.stdout + r.stderr


# -- 9. domain separation ---------------------------------------------------------------------


def test_the_same_imei_gives_unrelated_pseudonyms_in_tracksolid_and_wifikit():
    ts = send(pack("jimi-tracksolid"), f"tracksolid/{IMEI}/heartbeat", {"imei": IMEI})
    wk = send(pack("jimi-wifikit"), f"wifikit/{IMEI}/status", {"device_uid": IMEI})
    ts_token = json.loads(ts.payload)["imei"].split("-", 1)[1]
    wk_token = json.loads(wk.payload)["device_uid"]
    assert ts_token == pseudonym(IMEI, "pack:jimi-tracksolid", "device")
    assert wk_token == pseudonym(IMEI, "pack:jimi-wifikit", "device")
    assert ts_token != wk_token and ts_token not in wk.topic and wk_token not in ts.topic
    # within one pack, topic and payload still match
    assert wk.topic == f"cloud/wifikit/{wk_token}/status"


def test_the_same_phone_gives_another_ciphertext_in_every_pack_and_field_and_each_reveals():
    tokens = [
        json.loads(send(pack("jimi-tracksolid"), "tracksolid/x/heartbeat", {"sos_numbers": [PHONE]}).payload)
        ["sos_numbers"][0],
        json.loads(send(pack("jimi-wifikit"), "wifikit/x/login", {"mobile": PHONE}).payload)["mobile"],
        json.loads(send(pack("smartlocker-jenix"), "smartlocker/a/b/event", {"operator": {"phone": PHONE}}).payload)
        ["operator"]["phone"],
        json.loads(send(pack("smartlocker-jenix"), "smartlocker/a/b/event", {"operator": {"email": PHONE}}).payload)
        ["operator"]["email"],
        json.loads(send(pack("smartlocker-jenix"), "smartlocker/a/b/payment", {"payment": {"upi_ref": PHONE}}).payload)
        ["payment"]["upi_ref"],
    ]
    assert len({t.rsplit(".", 1)[1] for t in tokens}) == len(tokens)
    for token in tokens:
        assert "9876543210" not in token
        assert decrypt(token) == PHONE == reveal(Keyring.test(), token)
    r = subprocess.run([GATEWAY, "reveal", "--test-keys", *tokens], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == [PHONE] * len(tokens)


def linked(name: str, link: str, op_link: str = "") -> str:
    meta = f'link_domain = "{link}"' if link else ""
    extra = f'\nlink_domain = "{op_link}"' if op_link else ""
    return f"""
[policy]
name = "{name}"
version = "1"
{meta}

[route]
topics = ["{name}/{{id}}/up"]
upstream = "cloud/{name}/{{id}}"

[route.capture.id]
op = "pseudonymise"
domain = "device"{extra}

[[field]]
path = "id"
op = "pseudonymise"
domain = "device"{extra}

[[field]]
path = "phone"
op = "encrypt"
domain = "phone"{extra}
"""


def outputs(toml: str, name: str) -> tuple[str, str, str]:
    eng = Engine([loads(toml.encode(), f"{name}.toml")], Keyring.test(), now=NOW)
    res = send(eng, f"{name}/{IMEI}/up", {"id": IMEI, "phone": PHONE})
    out = json.loads(res.payload)
    return res.topic.split("/")[2], out["id"], out["phone"]


def test_linkage_only_where_packs_declare_the_same_link_domain():
    a, b = outputs(linked("pa", ""), "pa"), outputs(linked("pb", ""), "pb")
    assert a[1] != b[1] and a[2] != b[2]
    assert a[1] == a[0] == pseudonym(IMEI, "pack:pa", "device")
    la, lb = outputs(linked("pa", "fleet"), "pa"), outputs(linked("pb", "fleet"), "pb")
    assert la[1] == lb[1] == pseudonym(IMEI, "link:fleet", "device") and la[2] == lb[2]
    assert la[2].startswith("enc.test.link:fleet.phone.") and decrypt(la[2]) == PHONE == reveal(Keyring.test(), la[2])
    other = outputs(linked("pc", "other"), "pc")
    assert other[1] != la[1] and other[2] != la[2]
    op_level = outputs(linked("pd", "", op_link="fleet"), "pd")  # declared on the operation
    assert op_level == la


def test_an_older_ciphertext_still_reveals():
    key = hkdf_sha256(TEST_SECRET, b"telemetry-gateway/v1|encrypt|aes-siv", 64)
    old = "enc.test." + base64.urlsafe_b64encode(AESSIV(key).encrypt(b"412345678901", None)).rstrip(b"=").decode()
    assert reveal(Keyring.test(), old) == "412345678901"
    forged = old.replace("enc.test.", "enc.test.jimi-wifikit.mobile.")
    with pytest.raises(ValueError):
        reveal(Keyring.test(), forged)


def test_subkeys_are_derived_when_compiling_not_per_message(monkeypatch):
    eng = pack("smartlocker-jenix")
    calls = []
    real = Keyring.derive
    monkeypatch.setattr(Keyring, "derive", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    for i in range(50):
        send(eng, "smartlocker/a/b/payment", {"payment": {"upi_ref": f"4123456789{i:02d}", "payer_vpa": f"{i}@ybl"}})
    assert calls == []


# -- 12. keys and URLs -------------------------------------------------------------------------


def write_keys(path: Path, secret: bytes, mode: int) -> Path:
    path.write_text(json.dumps({"active": "k1", "keys": {"k1": base64.b64encode(secret).decode()}}))
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o004, 0o620])
def test_a_key_file_others_can_access_is_refused_naming_file_and_mode(tmp_path, mode):
    secret = os.urandom(32)
    path = write_keys(tmp_path / "keys.json", secret, mode)
    with pytest.raises(KeyFileError) as info:
        Keyring.from_file(path)
    assert str(path) in str(info.value) and f"{mode:04o}" in str(info.value)
    assert base64.b64encode(secret).decode() not in str(info.value)


def test_the_cli_refuses_a_readable_key_file_and_the_test_key_with_exit_2(tmp_path):
    readable = write_keys(tmp_path / "keys.json", os.urandom(32), 0o644)
    r = subprocess.run([GATEWAY, "minimise", "--keys", str(readable), "--policy", str(RULES / "jimi-tracksolid.toml"),
                        "--topic", "tracksolid/1/heartbeat"], input="{}\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and str(readable) in r.stderr and "0644" in r.stderr and r.stdout == ""
    public = write_keys(tmp_path / "public.json", TEST_SECRET, 0o600)
    r = subprocess.run([GATEWAY, "reveal", "enc.test.x.y.AAAA"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "GATEWAY_KEYS_FILE": "", "GATEWAY_KEYS": public.read_text()})
    assert r.returncode == 2 and "public test key" in r.stderr and "gateway keygen" in r.stderr
    assert base64.b64encode(TEST_SECRET).decode() not in r.stderr


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_file_is_accepted(tmp_path, mode):
    assert Keyring.from_file(write_keys(tmp_path / "k.json", os.urandom(32), mode)).active == "k1"


@pytest.mark.parametrize("secret", [TEST_SECRET, bytes(32), bytes(64), b"\xff" * 32, b"ab" * 16, bytes(range(8)) * 4])
def test_the_public_test_key_and_non_random_keys_are_refused_outside_test_keys(tmp_path, secret):
    path = write_keys(tmp_path / "k.json", secret, 0o600)
    with pytest.raises(KeyFileError, match="k1"):
        Keyring.from_file(path)
    with pytest.raises(KeyFileError) as info:
        Keyring.from_json(path.read_text())
    assert base64.b64encode(secret).decode() not in str(info.value)


def test_keygen_rotate_never_writes_through_a_planted_link_or_file(tmp_path):
    keys = tmp_path / "keys.json"
    keygen(keys)
    before = keys.read_bytes()
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    tmp = tmp_path / "keys.json.tmp"
    tmp.symlink_to(victim)
    with pytest.raises(KeyFileError, match=r"keys\.json\.tmp"):
        keygen(keys, rotate=True)
    assert victim.read_text() == "do not touch" and keys.read_bytes() == before
    tmp.unlink()
    tmp.write_text("stale")
    with pytest.raises(KeyFileError, match=r"interrupted rotation\?"):
        keygen(keys, rotate=True)
    tmp.unlink()
    old = os.umask(0)
    try:
        assert keygen(keys, rotate=True) == "k2"
    finally:
        os.umask(old)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and not tmp.exists()
    assert Keyring.from_file(keys).ids == ["k1", "k2"]


LOCAL = '[local]\nurl = "mqtt://127.0.0.1:1883"\n'
CLOUD = '[cloud]\nurl = "mqtts://cloud.example.com:8883"\n'


def config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('policies = ["p.toml"]\n' + body)
    return path


@pytest.mark.parametrize(
    "url",
    [
        "mqtts://cloud.example.com:8883/?password=S3CRET-CANARY",
        "mqtts://cloud.example.com:8883?token=S3CRET-CANARY",
        "mqtts://cloud.example.com?S3CRET-CANARY",
        "mqtts://cloud.example.com:8883/#S3CRET-CANARY",
        "mqtts://site:S3CRET-CANARY@cloud.example.com:8883",
        "mqtts://S3CRET-CANARY@cloud.example.com",
        "mqtts://:S3CRET-CANARY@cloud.example.com",
        "mqtts://site:S3CRET/CANARY@cloud.example.com",
        "mqtts://cloud.example.com:S3CRET-CANARY",
    ],
)
def test_a_cloud_url_with_credentials_is_refused_without_printing_them(tmp_path, url):
    with pytest.raises(ConfigError) as info:
        load_config(config(tmp_path, LOCAL + f'[cloud]\nurl = "{url}"\n'))
    assert "S3CRET" not in str(info.value) and "CANARY" not in str(info.value)


def test_gateway_run_refuses_a_url_with_credentials_without_printing_them(tmp_path):
    for url in ["mqtts://cloud.example.com:8883/?password=S3CRET-CANARY", "mqtts://site:S3CRET-CANARY@cloud.example.com"]:
        r = subprocess.run([GATEWAY, "run", "--config", str(config(tmp_path, LOCAL + f'[cloud]\nurl = "{url}"\n'))],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 78 and "url" in r.stderr  # EX_CONFIG (docs/operations.md, Exit codes)
        assert "S3CRET" not in r.stdout + r.stderr and "CANARY" not in r.stdout + r.stderr


@pytest.mark.parametrize("host", ["192.168.1.10", "site-broker.lan", "10.0.0.2", "[2001:db8::1]"])
def test_plaintext_local_to_another_host_needs_allow_insecure(tmp_path, host):
    body = f'[local]\nurl = "mqtt://{host}:1883"\n' + CLOUD
    with pytest.raises(ConfigError, match=r"\[local\].*allow_insecure"):
        load_config(config(tmp_path, body))
    cfg = load_config(config(tmp_path, body.replace("[cloud]", "allow_insecure = true\n[cloud]")))
    assert not cfg.local.tls


@pytest.mark.parametrize("url", ["mqtt://127.0.0.1:1883", "mqtt://localhost", "mqtt://[::1]:1883",
                                 "mqtt://127.0.0.2", "mqtts://site-broker.lan"])
def test_loopback_or_tls_local_needs_no_switch(tmp_path, url):
    assert load_config(config(tmp_path, f'[local]\nurl = "{url}"\n' + CLOUD)).local.url == url


def test_an_upper_case_tls_scheme_is_tls(tmp_path):
    cfg = load_config(config(tmp_path, LOCAL + '[cloud]\nurl = "MQTTS://cloud.example.com"\n'))
    assert cfg.cloud.tls and cfg.cloud.port == 8883


def test_endpoint_error_text_never_contains_the_url():
    from gateway.service.config import Endpoint

    for url in ["mqtts://h?pw=CANARY1", "mqtt://u:CANARY2@h", "mqtt://h:CANARY3", "ftp://CANARY4"]:
        with pytest.raises(msgspec.ValidationError) as info:
            msgspec.convert({"url": url}, Endpoint)
        assert "CANARY" not in str(info.value)


def test_the_refused_url_examples_in_configuration_md(tmp_path):
    doc = (ROOT / "docs" / "configuration.md").read_text()
    blocks = re.findall(r"```toml\n(# (refused|accepted): ([^\n]*)\n(.*?))```", doc, re.S)
    assert len(blocks) >= 4
    for text, verdict, message, body in blocks:
        other = LOCAL if body.startswith("[cloud]") else CLOUD
        path = config(tmp_path, other + text)
        if verdict == "refused":
            with pytest.raises(ConfigError, match=re.escape(message)) as info:
                load_config(path)
            assert "hunter2" not in str(info.value)
        else:
            assert load_config(path)
