"""The detectors' gates only skip work: ``find`` gives what ``find_ungated`` gives (every
pattern run over the whole text) on awkward text, unique tokens, other scripts' digits,
escapes, secrets, e-mails, IPs and coordinates."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.ops import detect

KEYWORDS = [
    "token", "Token", "TOKEN", "pwd", "password", "db_password", "client-secret", "x.api_key", "refreshToken",
    "apiKey", "ApiKey", "sid", "jsessionid", "SESSIONID", "session_token", "mPin", "MPIN", "pin", "p\u0131n",
    "P\u0130N", "\u017fecret", "\u212aey", "hmac_key", "wifi-key", "root.key", "pass", "DB_PASS", "x.pass",
    "authorization", "Proxy-Authorization", "Bearer", "basic", "Basic", "otp", "OTP is", "cvv2", "cvc", "upi pin",
    "upi_pin", "passcode", "cookie", "psk", "creds", "credentials", "privateKey", "PrivateKey", "sid_hash",
    "keypin", "spinner", "passphrase", "signing-key", "masterKey", "shared_key", "device_key", "admin-key",
    "access_key", "private_key", "auth_key", "appKey", "sessid", "secretValue", "pwdHash", "bearer",
]
SEPARATORS = [
    "=", ":", " = ", ": ", '\\"', '"', "'", "\t", " ", "  ", ";", "; ", ",", "&", "\\", "\n", "/", "-", "_", ".",
    "(", ")", "[", "]", "{", "}", "\u00b0", "\u2032", "\u2033", "+", "?", "#", "|", "\u00a0", "\u200b", "\u3002",
]
VALUES = [
    "Hunter5", "310e918e7769", "1234", "123456", "1", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig",
    "eyJhbGciOiJIUzI1NiJ9", "AKIAIOSFODNN7EXAMPLE", "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----",
    "ghp_abcdefghijklmnopqrstuvwxyz0123", "sk_live_abcdefghijklmnop1234", "https://user:pw@host/x", "ftp://a:b@c",
    "asha.rao@example.com", '"asha rao"@example.com', "asha [at] example [dot] com", "asha(at)example.com",
    "asha@okaxis", "upi://pay?pa=asha@okaxis&pn=Asha%20Rao", "203.0.113.77", "203.0.113.77.", "v1.2.3.4",
    "203-0-113-77.static.example.net", "ip-10-0-0-5", "ec2-203-0-113-77", "2406:da1a:b081::a253", "::1",
    "fe80::1%eth0", "12.971598, 77.594562", "12.971598&lon=77.594562", "12,971598 77,594562",
    "12\u00b058'17.7\"N 77\u00b035'40.4\"E", "1\u00b02'3.4\"N 5\u00b06'E", "12\u00b058.2959'N 77\u00b035.6'E",
    "N 12.971598 E 77.594562", "4111 1111 1111 1111", "4111-1111-1111-1111", "4111.1111.1111.1111",
    "+91 98765 43210", "+(91)9876543210", "+91.98765.43210", "358756091234567", "123456789012", "9876543210",
    "\u0968\u0966\u0969.\u0966.\u0967\u0967\u0969.\u096d\u096d",
    "\u0669\u0668\u0667\u0666\u0665\u0664\u0663\u0662\u0661\u0660",
    "\uff14\uff11\uff11\uff11", "\u4e00\u4e09\u516b\u3007\u3007\u4e00\u4e09\u516b\u3007\u3007\u3007", "%40", "%2540",
    "&#64;", "&#x40;", "\\u0040", "%3D", "2026-01-15T06:03:36Z", "2026-01-15", "20260115", "12/05/2026",
    "550e8400-e29b-41d4-a716-446655440000", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "3.14159265358979",
    "10.0.19045.3693", "0x80070005", "\u2460\u2461\u2462", "\uff20", "\u2212", "12 12 12 12 12",
]
FRAGMENTS = KEYWORDS + SEPARATORS + VALUES
TOKEN = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=16)  # unique per message
PART = st.one_of(st.sampled_from(FRAGMENTS), TOKEN, st.text(max_size=4))
TEXT = st.lists(PART, max_size=14).map("".join)
ENABLED = st.one_of(st.just(detect.ALL), st.frozensets(st.sampled_from(detect.DETECTORS)))


@settings(max_examples=3000, deadline=None)
@given(TEXT, ENABLED)
@example("server=https://api.mi-jack.example/v2; tenant=acme-rail; sync_interval=60; token=310e918e7769", detect.ALL)
@example("sid\t=abc123", detect.ALL)
@example("sid_hash=abc123", detect.ALL)
@example('{\\"sid\\":\\"abc123\\"}', detect.ALL)
@example("p\u0131n=1234", detect.ALL)
@example("1\u00b02'3.4\"N 5\u00b06'E", detect.ALL)
@example("1234567890 ", detect.ALL)
def test_find_is_find_ungated(text: str, enabled: frozenset[str]) -> None:
    assert detect.find(text, enabled) == detect.find_ungated(text, enabled)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="0123456789 \t-./_()+x\u0663", max_size=40))
def test_digit_runs_gate(text: str) -> None:
    assert detect.find(text) == detect.find_ungated(text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([*KEYWORDS, "=", ":", " ", '"', "'", "\\", "_", "-", ".", "x", "12", "A"]), max_size=8))
def test_secret_keywords_gate(parts: list[str]) -> None:
    text = "".join(parts)
    assert detect.find(text, frozenset({"secret"})) == detect.find_ungated(text, frozenset({"secret"}))


@pytest.mark.parametrize(
    "text",
    [
        "sid\t=abc123",  # keyword, a tab, then "="
        "sid_hash=abc123",
        '{\\"sid\\":\\"abc123\\"}',  # JSON-escaped quotes after the keyword
        "p\u0131n=1234",  # dotless i: (?i) reads it as "pin"
        "1\u00b02'3.4\"N 5\u00b06'E",  # a precise DMS pair with six digits
    ],
)
def test_forms_the_old_gates_hid(text: str) -> None:
    assert detect.find(text), text
