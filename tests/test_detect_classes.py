"""Issue 9, other members of each detector class than the issue's examples: digits that are not
decimal digits (circled, dingbat, "digit nine full stop", Ethiopic, CJK numerals), separators
that are no dashes to Unicode (katakana prolonged sound mark, middle dots), IPv4 addresses with
leading zeros, ideographic full stops or glued to a word, credentials known by their form
(JWT, AWS key id, PEM private key, vendor tokens), keyword secrets followed by a bare code, and
coordinates with a hemisphere letter, a key between the numbers, or in degrees and minutes.
"""

# ruff: noqa: RUF001  (other scripts' characters are what these tests are about)
from __future__ import annotations

import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ops.detect import find, scrub

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PHONE = "9876543210"


def _digit_forms(d: int) -> list[str]:
    """Characters that read as digit ``d`` without being a decimal digit, found from Unicode
    data here (not from the detector's tables)."""
    out = []
    for cp in range(0x80, 0x30000):
        ch = chr(cp)
        if unicodedata.decimal(ch, None) is None and unicodedata.digit(ch, None) == d:
            out.append(ch)
    return out


DIGIT_FORMS = {d: _digit_forms(d) for d in range(10)}


def test_every_digit_has_several_non_decimal_forms():
    assert all(len(forms) >= 5 for forms in DIGIT_FORMS.values())  # superscript, subscript, circled, dingbat, ...
    assert "➒" in DIGIT_FORMS[9] and "❾" in DIGIT_FORMS[9] and "⒐" in DIGIT_FORMS[9]


@SETTINGS
@given(data=st.data(), before=st.sampled_from(["", "call ", "tel:", "x "]))
def test_a_phone_in_non_decimal_digit_forms_is_found(data, before):
    """Each digit drawn from all forms Unicode gives it (one number may mix them)."""
    text = "".join(data.draw(st.sampled_from(DIGIT_FORMS[int(d)])) for d in PHONE)
    hits = find(before + text)
    assert [h[0] for h in hits] == ["phone"], (text, hits)
    assert scrub(before + text) == before + "[PHONE]"


@pytest.mark.parametrize(
    "text",
    [
        "九八七六五四三二一〇",  # CJK numerals
        "一三八〇〇一三八〇〇〇",
        "፱፰፯፮፭፬፫፪፩0",  # Ethiopic
        "98765ー43210",  # katakana prolonged sound mark as a dash
        "98765ｰ43210",
        "98765·43210",
        "98765・43210",
        "98765‧43210",
        "+91·98450·12345",
    ],
)
def test_other_digit_and_separator_forms(text):
    assert [h[0] for h in find(text)] == ["phone"], find(text)
    assert scrub(f"a {text} b") == "a [PHONE] b"


# -- IPv4 -----------------------------------------------------------------------------------

OCTETS = st.tuples(st.integers(1, 223), st.integers(0, 255), st.integers(0, 255), st.integers(1, 254))
GLUE = st.sampled_from(["ip", "IP", "addr", "host_", "src", "dst", "peer", "from", "gw", "remote", "Client"])


@SETTINGS
@given(octets=OCTETS, glue=GLUE, zeros=st.booleans(), stop=st.sampled_from([".", "。", "｡", "．"]))
def test_an_ipv4_address_glued_to_a_word_with_zeros_or_other_full_stops(octets, glue, zeros, stop):
    parts = [f"{o:03d}" if zeros else str(o) for o in octets]
    address = stop.join(parts)
    text = f"{glue}{address}:443 down"
    hits = find(text)
    assert [h[0] for h in hits] == ["ip"], (text, hits)
    assert scrub(text) == f"{glue}[IP]:443 down"


@pytest.mark.parametrize(
    "text",
    ["v1.2.3.4", "V1.2.3.4", "ver1.2.3.4", "version1.2.3.4", "rev2.1.0.4", "r1.2.3.4", "build3.2.0.14",
     "fw2.1.0.4", "FW_2.1.0.4", "v_1.2.3.4", "firmware2.1.0.4", "release10.0.0.1", "1.2.3.4.5", "203.0.113"],
)  # fmt: skip
def test_version_strings_glued_to_a_version_word_are_not_addresses(text):
    assert find(text) == [], find(text)


# -- secrets --------------------------------------------------------------------------------

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0t\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    "text, secret",
    [
        (f"auth failed for {JWT} at gw", JWT),
        (f'{{"jwt":"{JWT}"}}', JWT),
        ("key AKIAIOSFODNN7EXAMPLE rejected", "AKIAIOSFODNN7EXAMPLE"),
        ("ASIAY34FZKBOKMUTVV7A expired", "ASIAY34FZKBOKMUTVV7A"),
        (f"loaded {PEM} ok", PEM),
        ("-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
        ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBYr", "MHcCAQEEIBYr"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 revoked", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
        ("slack xoxb-123456789012-abcdefghijkl failed", "xoxb-123456789012-abcdefghijkl"),
        ("stripe sk_live_abcdefghijklmnop12345678 bad", "sk_live_abcdefghijklmnop12345678"),
        ("maps AIzaSyA-abcdefghijklmnopqrstuvwxyz12345 quota", "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345"),
        ("otp 482193 sent", "482193"),
        ("OTP is 482193", "482193"),
        ("upi pin 4821 entered", "4821"),
        ("CVV 123 ok", "123"),
        ("pin# 4821", "4821"),
        ("pass=Winter2026x", "Winter2026x"),
        ("session_id=abcd1234efgh", "abcd1234efgh"),
        ("Cookie: sid=abcd1234efgh", "abcd1234efgh"),
        ("Set-Cookie: JSESSIONID=ABCD1234EF; Path=/", "ABCD1234EF"),
    ],
)
def test_credentials_known_by_their_form_or_a_bare_code(text, secret):
    out = scrub(text)
    assert "[SECRET]" in out and secret not in out, out


@pytest.mark.parametrize(
    "text",
    ["PIN mode", "pin 12 high", "pin code 560001", "tests pass: 3", "the session ended", "Asia/Kolkata",
     "ASIAN market", "eyJ is how base64 JSON starts", "BEGIN PUBLIC KEY", "skip_live_view", "otp sent"],
)  # fmt: skip
def test_words_near_the_new_secret_forms_are_not_secrets(text):
    assert find(text) == [], find(text)


# -- coordinates ----------------------------------------------------------------------------


@SETTINGS
@given(
    lat=st.floats(-89.9, 89.9).map(lambda x: round(x, 6)),
    lon=st.floats(-179.9, 179.9).map(lambda x: round(x, 6)),
    shape=st.sampled_from(
        ["lat={a}&lon={b}", "latitude={a}&longitude={b}", "lon={b}&lat={a}", "x={a} y={b}",
         '{{"lat":{a},"lng":{b}}}', '{{"lat":"{a}","lon":"{b}"}}', "N{a} E{b}", "lat: {a}, lon: {b}"]
    ),
)  # fmt: skip
def test_keyed_coordinate_pairs_in_text(lat, lon, shape):
    a, b = f"{lat:.6f}", f"{lon:.6f}"
    if shape.startswith("N"):  # the hemisphere letter is the sign
        a, b = a.lstrip("-"), b.lstrip("-")
    text = shape.format(a=a, b=b)
    hits = find(text)
    assert [h[0] for h in hits] == ["coordinate"], (text, hits)
    out = scrub(text)
    assert a.lstrip("-") not in out and b.lstrip("-") not in out, out


@pytest.mark.parametrize(
    "text",
    ["12°58'17.7\"N 77°35'40.4\"E", "12°58′17.7″N, 77°35′40.4″E", "12° 58' 17.75\" S 77° 35' 40.4\" W",
     "12°58.2959'N 77°35.6737'E", "at 12°58.296'N/77°35.674'E"],
)  # fmt: skip
def test_precise_degrees_minutes_seconds(text):
    assert "coordinate" in [h[0] for h in find(text)], find(text)
    assert "17.7" not in scrub(text) and "58.29" not in scrub(text)


@pytest.mark.parametrize(
    "text", ["12°58'17\"N 77°35'40\"E", "12°58.29'N 77°35.67'E", "lat=12.972&lon=77.595", "x=12.5 y=77.25", "23.5°C"]
)
def test_coarse_degrees_and_short_keyed_pairs_are_not_precise(text):
    """Whole seconds (30 m), two decimals of a minute (18 m), three decimals of a degree."""
    assert find(text) == [], find(text)


# -- cost -----------------------------------------------------------------------------------

PATHOLOGICAL = {
    "glued addresses": "ip1.2.3.4 " * 6553,
    "version glue": "v1.2.3.4." * 7281,
    "jwt heads": "eyJabcdefgh." * 5461,
    "pem begins": "-----BEGIN PRIVATE KEY-----" * 2427,
    "aws heads": "AKIA" * 16384,
    "degrees": "12°58'17.7\"N " * 5041,
    "keyed pairs": "lat=12.123456&" * 4681,
    "bare codes": "otp 1234 " * 7281,
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_64_kib_of_the_new_forms_is_cheap(name):
    text = PATHOLOGICAL[name]
    assert 60_000 <= len(text) <= 70_000
    scrub(text)
    best = min(_timed(scrub, text) for _ in range(3))
    assert best < 0.1, f"{name}: {best * 1000:.1f} ms"


def _timed(fn, text):
    start = time.process_time()
    fn(text)
    return time.process_time() - start


# -- second round: escaped JSON, quoted values, dashed addresses, quoted local parts, decimal commas


@pytest.mark.parametrize(
    "keyword", ["password", "db_password", "client_secret", "authorization", "wifi_psk", "AUTH_KEY", "pwd"]
)
@pytest.mark.parametrize(
    "shape",
    [
        '{{\\"{k}\\":\\"Winter 2026!\\"}}',  # JSON inside a JSON string, as a crash log quotes it
        '{{\\"{k}\\": \\"Winter 2026!\\"}}',
        '"{k}" : "Winter 2026!"',
        "{k}='Winter 2026!'",
        '{k}="Winter 2026!"',
    ],
)
def test_a_quoted_or_escaped_secret_value_is_scrubbed_whole(keyword, shape):
    text = "cfg " + shape.format(k=keyword) + " end"
    out = scrub(text)
    assert "Winter" not in out and "2026" not in out and "[SECRET]" in out, out
    assert out.startswith("cfg ") and out.endswith(" end"), out


@pytest.mark.parametrize(
    "text",
    ["signing_key=abcd1234", "encryption-key: abcd1234", "hmac_key=abcd1234", "psk=hunter22",
     "WPA_PSK=hunter22", "creds=abcd1234", "license_key=ABCD-1234", "device_key=abcd1234"],
)  # fmt: skip
def test_more_key_names_are_secrets(text):
    assert "[SECRET]" in scrub(text), scrub(text)


@SETTINGS
@given(octets=OCTETS, host=st.sampled_from(["ip-{}", "ec2-{}.compute-1.amazonaws.com", "{}.static.example.net",
                                             "dsl-{}-static.example.net", "ip-{}.ec2.internal"]))  # fmt: skip
def test_an_ipv4_address_written_with_dashes_in_a_host_name(octets, host):
    dashed = "-".join(map(str, octets))
    text = "connect to " + host.format(dashed) + " failed"
    out = scrub(text)
    assert dashed not in out, out  # [IP], or a number token where "ec2-" glues a digit to it
    assert "[IP]" in out or out.count("[") == 1, out


@pytest.mark.parametrize("text", ["2026-11-23", "23-11-2026", "ip-1-2-3-4-5", "1-2-3-4", "10-11-12-13", "v-2-1-0"])
def test_dashed_numbers_that_are_no_host_name_are_not_addresses(text):
    assert find(text) == [], find(text)


@pytest.mark.parametrize(
    "text, kind",
    [('"asha rao"@example.com', "email"), ('mail "a.b"@mail.example.co.in now', "email"), ('"asha"@okaxis', "upi_vpa")],
)
def test_a_quoted_local_part(text, kind):
    assert kind in [h[0] for h in find(text)]
    assert "asha" not in scrub(text) and "a.b" not in scrub(text)


@SETTINGS
@given(
    lat=st.floats(-89.9, 89.9).map(lambda x: f"{x:.6f}".replace(".", ",")),
    lon=st.floats(-179.9, 179.9).map(lambda x: f"{x:.6f}".replace(".", ",")),
    sep=st.sampled_from([" ", ";", "; ", "  "]),
)
def test_a_pair_with_decimal_commas(lat, lon, sep):
    text = f"pos {lat}{sep}{lon} ok"
    assert scrub(text) == "pos [COORDINATE] ok", scrub(text)


@pytest.mark.parametrize("text", ["total 1,234,567 items", "12,97 77,59", "3,5 kg 4,25 kg", "price 1,23456"])
def test_decimal_commas_that_are_no_position(text):
    assert find(text) == [], find(text)


@pytest.mark.parametrize(
    "link",
    [
        "upi://pay?pa=asha@okaxis&pn=Asha%20Rao&tn=call%20+919876543210&am=10",
        "UPI://PAY?PA=asha.rao@okaxis&PN=Asha+Rao",
        "upi://mandate?pn=Asha&pa=asha@ybl&am=1",
        "tez://upi/pay?pa=asha@okaxis&pn=Asha",
        "https://pay.example/p?pa=asha%40okaxis&pn=Asha%20Rao",
        "phonepe://pay?pa=9876543210@ybl&pn=Asha",
    ],
)
def test_a_upi_payment_link_keeps_no_payee_name_or_note(link):
    """The payee's address comes with the name (pn) and a note (tn): the whole query goes."""
    out = scrub(f"scan {link}#frag, then wait")
    assert "[UPI_VPA]" in out and "Asha" not in out and "asha" not in out and "98765" not in out, out
    assert out.startswith("scan ") and out.endswith("#frag, then wait"), out


@pytest.mark.parametrize("text", ["GET /x?data=1&area=5 200", "?page=2&sort=asc", "https://example.com/?q=pa"])
def test_ordinary_queries_are_not_payment_links(text):
    assert find(text) == [], find(text)


@pytest.mark.parametrize(
    "text",
    ["mail asha [at] example [dot] com now", "asha(at)example.com", "asha{at}example(dot)co(dot)in",
     "ASHA [AT] EXAMPLE [DOT] COM", "asha.rao (at) mail.example.org"],
)  # fmt: skip
def test_an_email_with_the_at_sign_spelt_out(text):
    assert "email" in [h[0] for h in find(text)], find(text)
    assert "asha" not in scrub(text).lower(), scrub(text)


@pytest.mark.parametrize("text", ["meet (at) noon", "look [at] this", "pay asha[at]okaxis", "see [at] 10.30 am"])
def test_a_spelt_at_without_a_domain_is_not_an_address(text):
    assert find(text) == [], find(text)
