"""Detectors shared by ``scrub`` and the leak guard: positives, negatives, and linear time.

Card numbers and IMEIs are built here with Luhn check digits computed by our own
implementation; expected spans and tokens are worked out by hand.
"""

from __future__ import annotations

import string
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ops.detect import ALL, DETECTORS, classify_number, find, first, luhn, scrub

# -- an independent Luhn ------------------------------------------------------------------


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number]
    odd = digits[-1::-2]
    even = [sum(divmod(2 * d, 10)) for d in digits[-2::-2]]
    return (sum(odd) + sum(even)) % 10 == 0


def with_check_digit(payload: str) -> str:
    for d in "0123456789":
        if luhn_ok(payload + d):
            return payload + d
    raise AssertionError


def with_wrong_check_digit(payload: str) -> str:
    good = with_check_digit(payload)[-1]
    return payload + str((int(good) + 1) % 10)


VISA = with_check_digit("411111111111111")  # 4111111111111111
assert VISA == "4111111111111111"
MASTERCARD = with_check_digit("555555555555444")  # 5555555555554444
AMEX = with_check_digit("37828224631000")  # 378282246310005 (15 digits)
IMEI = with_check_digit("49015420323751")  # 490154203237518
IMEI_BAD = with_wrong_check_digit("49015420323751")


def test_reference_numbers_are_what_the_specs_say():
    assert MASTERCARD == "5555555555554444"
    assert AMEX == "378282246310005"
    assert IMEI == "490154203237518"


# -- luhn / classify_number ---------------------------------------------------------------


@pytest.mark.parametrize("number", ["79927398713", VISA, MASTERCARD, AMEX, IMEI, "0", "18", "59"])
def test_luhn_valid(number):
    assert luhn(number) is True


@pytest.mark.parametrize("number", ["79927398710", "4111111111111112", IMEI_BAD, "1", "19"])
def test_luhn_invalid(number):
    assert luhn(number) is False


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=25))
def test_luhn_matches_independent_implementation(number):
    assert luhn(number) == luhn_ok(number)


@pytest.mark.parametrize(
    "value, expected",
    [
        (412345678901, "utr"),  # 12 digits
        (-412345678901, "utr"),
        (100_000_000_000, "utr"),  # the smallest 12-digit number
        (99_999_999_999, None),  # 11 digits
        (9876543210, None),  # 10 digits: epoch seconds far more often
        (1_700_000_000_123, None),  # 13 digits: epoch milliseconds
        (17_000_000_001_234, None),  # 14 digits
        (int(IMEI), "imei"),
        (int(IMEI_BAD), None),
        (int(VISA), "card"),
        (int(MASTERCARD), "card"),
        (int("4111111111111112"), None),
        (int(with_check_digit("6" * 18)), "card"),  # 19 digits
        (int(with_check_digit("6" * 19)), None),  # 20 digits
        (0, None),
        (42, None),
    ],
)
def test_classify_number(value, expected):
    assert classify_number(value) == expected


# -- cards and IMEIs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, span",
    [
        (VISA, (0, 16)),
        ("4111 1111 1111 1111", (0, 19)),
        ("4111-1111-1111-1111", (0, 19)),
        ("paid with 4111 1111 1111 1111.", (10, 29)),
        ("cc=4111111111111111&x=1", (3, 19)),
        (MASTERCARD, (0, 16)),
        (AMEX, (0, 15)),  # 15 digits but 37...: a card, not an IMEI
        ("3782 822463 10005", (0, 17)),
    ],
)
def test_card_positive(text, span):
    assert find(text) == [("card", *span)]


@pytest.mark.parametrize("text", ["4111111111111112", "4111 1111 1111 1112", with_wrong_check_digit("5" * 15)])
def test_luhn_invalid_16_digits_are_not_cards(text):
    assert "card" not in {k for k, *_ in find(text)}


@pytest.mark.parametrize("text", [IMEI, f"IMEI:{IMEI}", f"imei={IMEI}", f"device {IMEI} online"])
def test_imei_positive(text):
    assert first(text) == "imei"
    assert IMEI not in scrub(text)
    assert "[IMEI]" in scrub(text)


def test_luhn_invalid_imei_is_not_an_imei():
    assert first(IMEI_BAD) != "imei"
    assert first(IMEI_BAD, frozenset({"imei"})) is None


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(alphabet="0123456789", min_size=15, max_size=15),
    before=st.text(alphabet=string.ascii_letters + " ", max_size=12),
    after=st.text(alphabet=string.ascii_letters + " ", max_size=12),
    sep=st.sampled_from(["", " ", "-"]),
)
def test_any_luhn_valid_16_digit_card_is_scrubbed(body, before, after, sep):
    card = with_check_digit("4" + body[:14])
    formatted = sep.join(card[i : i + 4] for i in range(0, 16, 4))
    text = f"{before} {formatted} {after}"
    assert first(formatted) == "card"
    out = scrub(text)
    assert "[CARD]" in out or "[SECRET]" in out  # "basic 4111..." reads as credentials: also removed
    assert card not in out.replace(" ", "").replace("-", "")


@settings(max_examples=200, deadline=None)
@given(body=st.text(alphabet="0123456789", min_size=13, max_size=13))
def test_any_luhn_valid_15_digit_imei_is_found(body):
    number = with_check_digit("86" + body[:12])
    assert first(number) == "imei"
    assert classify_number(int(number)) == "imei"
    wrong = with_wrong_check_digit("86" + body[:12])
    assert first(wrong) != "imei"
    assert classify_number(int(wrong)) is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23 4111111111111111",  # a date, then a card
        "card 4111111111111111 5",  # a card, then a small number
        "qty 2 4111 1111 1111 1111",  # a small number, then a card
        "order 7 4111-1111-1111-1111 ok",
        "Items: 1 2 3 4 5 6 7 4111 1111 1111 1111",  # many small numbers, then a grouped card
        "regs 1 2 3 4 5 6 7 8 9 10 11 12 4111111111111111",
    ],
)
def test_card_next_to_another_number_is_still_found(text):
    """A card number must not hide behind a neighbouring number separated by one space."""
    out = scrub(text)
    assert "4111" not in out, out
    assert "card" in {k for k, *_ in find(text)}


@pytest.mark.parametrize("text", ["9876543210 9123456780", "1 2 3 4 5 6 7 8 9 10 11 12 13 9876543210 9123456780"])
def test_phone_numbers_next_to_other_numbers_are_found(text):
    out = scrub(text)
    assert "9876543210" not in out and "9123456780" not in out, out


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(alphabet="0123456789", min_size=15, max_size=15),
    prefix=st.lists(st.one_of(st.integers(0, 9), st.integers(0, 999)), max_size=14),
    suffix=st.lists(st.integers(0, 999), max_size=3),
    sep=st.sampled_from(["", " ", "-"]),
)
def test_a_card_among_other_numbers_never_survives_scrub(body, prefix, suffix, sep):
    """Whatever numbers surround it (separated by single spaces), a card's digits do not
    come out of scrub in one piece."""
    card = with_check_digit("4" + body[:14])
    formatted = sep.join(card[i : i + 4] for i in range(0, 16, 4))
    text = " ".join([*map(str, prefix), formatted, *map(str, suffix)])
    out = scrub(text)
    assert card not in out.replace(" ", "").replace("-", ""), (text, out)


# -- UTR ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, span", [("412345678901", (0, 12)), ("UTR 412345678901 credited", (4, 16)), ("ref:412345678901.", (4, 16))]
)
def test_utr_positive(text, span):
    assert find(text) == [("utr", *span)]


@pytest.mark.parametrize("text", ["41234567890", "4123456789012", "4123 4567 8901"])
def test_not_twelve_contiguous_digits_is_not_a_utr(text):
    assert first(text) != "utr"


# -- e-mail and UPI VPA -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("alice@example.com", [("email", 0, 17)]),
        ("mail a.b+tag@mail.example.co.in now", [("email", 5, 31)]),
        ("<alice@example.com>", [("email", 1, 18)]),
        ("alice@okaxis", [("upi_vpa", 0, 12)]),
        ("pay 9876543210@ybl", [("upi_vpa", 4, 18)]),
        ("alice.k@oksbi paid", [("upi_vpa", 0, 13)]),
    ],
)
def test_email_and_vpa(text, expected):
    assert find(text) == expected


@pytest.mark.parametrize(
    "text", ["alice@x", "alice@example.c", "alice@ok1axis", "@okaxis", "a @ b", "alice@example.123", "@@"]
)
def test_not_email_or_vpa(text):
    assert find(text) == []


def test_email_vs_vpa_scrub_tokens_and_subsets():
    text = "pay alice@okaxis or mail alice@example.com"
    assert scrub(text) == "pay [UPI_VPA] or mail [EMAIL]"
    assert scrub(text, frozenset({"email"})) == "pay alice@okaxis or mail [EMAIL]"
    assert scrub(text, frozenset({"upi_vpa"})) == "pay [UPI_VPA] or mail alice@example.com"


# -- IP addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, span",
    [
        ("203.0.113.7", (0, 11)),
        ("from 10.0.0.1:8080", (5, 13)),
        ("net 192.168.1.1/24", (4, 15)),
        ("0.0.0.0", (0, 7)),
        ("255.255.255.255", (0, 15)),
        ("2001:db8::1", (0, 11)),
        ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", (0, 39)),
        ("fe80::1%eth0 up", (0, 12)),
        ("::1", (0, 3)),
        ("[::1]:80", (1, 4)),
        ("::ffff:1.2.3.4", (0, 14)),
        ("peer ::ffff:203.0.113.7 closed", (5, 23)),
    ],
)
def test_ip_positive(text, span):
    assert find(text) == [("ip", *span)]


def test_ipv4_mapped_is_scrubbed_whole():
    assert scrub("peer ::ffff:1.2.3.4 closed") == "peer [IP] closed"


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "v1.2.3.4",
        "12:34:56",
        "10:17:42.5",
        "std::vector",
        "de:ad:be:ef:00:01",
        "00:1A:2B:3C:4D:5E",
        "1:2",
    ],
)
def test_ip_negative(text):
    assert [k for k, *_ in find(text) if k == "ip"] == []


# -- phones -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, span",
    [
        ("+91 98765 43210", (0, 15)),
        ("+91-98765-43210", (0, 15)),
        ("+919876543210", (0, 13)),
        ("call +1 (555) 123-4567 now", (5, 22)),
        ("(555) 123-4567", (0, 14)),
        ("9876543210", (0, 10)),
        ("phone: 98765 43210", (7, 18)),
        ("tel:+44 20 7946 0958", (4, 20)),
        ("+49 30 1234567", (0, 14)),  # 11 digits with a plus
    ],
)
def test_phone_positive(text, span):
    assert find(text) == [("phone", *span)]


# -- secrets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "Authorization: Bearer [SECRET]"),
        ("Authorization: basic dXNlcjpwYXNz", "Authorization: basic [SECRET]"),
        ("password=hunter2", "password=[SECRET]"),
        ("PASSWORD = 'hunter2' ok", "PASSWORD = '[SECRET]' ok"),
        ('{"upi_pin": "1234"}', '{"upi_pin": "[SECRET]"}'),
        ('{"upi-pin":"1234","x":1}', '{"upi-pin":"[SECRET]","x":1}'),
        ("pin: 4321", "pin: [SECRET]"),
        ("otp=123456", "otp=[SECRET]"),
        ("url?token=abc123&next=1", "url?token=[SECRET]&next=1"),
        ("api_key: sk_live_abcdef", "api_key: [SECRET]"),
        ("x-access-key=AKIAIOSFODNN7EXAMPLE", "x-access-key=[SECRET]"),
        ("pwd:s3cr3t;", "pwd:[SECRET];"),
    ],
)
def test_secret_positive(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no password set",
        "the token expired",
        "passwords: 3",
        "Bearer short",
        "bearer of bad news",
        "keypin=1234",  # "pin" inside a word
        "spinner: on",
        "basic auth on",
    ],
)
def test_secret_negative(text):
    assert find(text) == []


def test_the_word_basic_before_a_long_word_is_not_a_secret():
    """ "Basic <credentials>" is an Authorization header; "basic configuration" is prose."""
    assert find("Basic configuration loaded") == []
    assert find("mode: basic settings") == []


# -- no false positives -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T10:17:00Z",
        "2026-11-23T10:17:00.123+05:30",
        "2026-11-23T10:17:00.123456789Z",
        "2026-11-23 10:17:00",
        "2026-11-23",
        "20261123T101700Z",
        "boot at 2026-11-23T10:17:00.123456+05:30 ok",
        "at 2026-11-23 10:17:42 -0300 done",
        "23/11/2026",
        "v2.3",
        "v2.3.4",
        "1.2.3",
        "version 10.0.19045",
        "firmware 3.14.159",
        "12345",
        "1234567",
        "room 101",
        "HTTP 404 port 8080",
        "build 20231123",
        "3.14159265358979",
        "lat 12.972 lon 77.595",  # three decimals: not precise (a pair with five is, see below)
        "price 1,234,567.89",
        "error 0x80070005",
        "12:30",
        "locked",
        "",
    ],
)
def test_no_false_positive(text):
    assert find(text) == []
    assert scrub(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "550e8400-e29b-41d4-a716-446655440000",  # the RFC 4122 / Wikipedia example UUID
        "trace 123e4567-e89b-12d3-a456-426614174000",
        "id 9b2e1a7c-0000-4000-8000-000000000000",
    ],
)
def test_uuid_is_not_an_identifier(text):
    """A UUID's last group can be 12 decimal digits (about 1 in 280 random UUIDs); it is
    still a UUID, not a UTR, and its groups are not a phone number."""
    assert find(text) == []


def test_day_month_year_date_with_hour_is_not_a_phone():
    """DD-MM-YYYY is the usual date order in India; with a time it must not read as a phone."""
    assert find("23-11-2026 10:17:00") == []
    assert find("logged 23-11-2026 10:17") == []


@settings(max_examples=200, deadline=None)
@given(
    when=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2099, 12, 31)),
    offset_min=st.integers(-12 * 60, 14 * 60).map(lambda m: m - m % 15),
    sep=st.sampled_from(["T", " "]),
    spec=st.sampled_from(["seconds", "milliseconds", "microseconds", "minutes"]),
    zone=st.sampled_from(["utc", "offset", "naive"]),
    framed=st.booleans(),
)
def test_iso_timestamps_are_never_identifiers(when, offset_min, sep, spec, zone, framed):
    if zone == "utc":
        when = when.replace(tzinfo=UTC)
    elif zone == "offset":
        when = when.replace(tzinfo=timezone(timedelta(minutes=offset_min)))
    text = when.isoformat(sep=sep, timespec=spec)
    if zone == "utc" and sep == "T":
        text = text.replace("+00:00", "Z")
    if framed:
        text = f"event at {text} done"
    assert find(text) == [], text


# -- detector plumbing --------------------------------------------------------------------


def test_detector_names_and_tokens():
    assert set(DETECTORS) == {"secret", "email", "upi_vpa", "ip", "card", "imei", "utr", "phone"}
    assert frozenset(DETECTORS) == ALL


def test_find_is_ordered_and_non_overlapping():
    text = "a@example.com 203.0.113.7 4111111111111111 +91 98765 43210 password=x 412345678901"
    hits = find(text)
    assert [k for k, *_ in hits] == ["email", "ip", "card", "phone", "secret", "utr"]
    ends = -1
    for _, start, end in hits:
        assert start >= ends and end > start
        ends = end
    assert first(text) == "email"
    assert first(text, frozenset({"utr"})) == "utr"
    assert first(text, frozenset()) is None
    assert scrub(text) == "[EMAIL] [IP] [CARD] [PHONE] password=[SECRET] [UTR]"


def test_disabled_detector_does_not_mask_an_enabled_one():
    # The VPA covers the phone digits; with only "phone" enabled the number is still found.
    assert first("9876543210@ybl", frozenset({"phone"})) == "phone"


# -- linear time --------------------------------------------------------------------------

ADVERSARIAL = {
    "at": "a@" * 500_000,
    "colon": "1:" * 500_000,
    "digit_space": "1 " * 500_000,
    "digit_dot": "1." * 500_000,
    "paren": "(1)" * 333_333,
    "bearer_spaces": "bearer" + " " * 1_000_000,
    "password_spaces": "password" + " " * 1_000_000,
    "ipv6ish": "1:1:1:1:1:1:1:1." * 62_500,
    "dotted_quads": "1.1 " * 250_000,
    "local_part": "a." * 499_999 + "@x",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_scrub_of_1mb_adversarial_input_is_fast(name):
    text = ADVERSARIAL[name]
    assert len(text) >= 999_999
    start = time.perf_counter()
    scrub(text)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("GET https://jdoe:Hunter2@10.0.0.5:8443/api failed", "GET https://[SECRET]@[IP]:8443/api failed"),
        ("mqtts://gw:s3cret@broker.example.com:8883", "mqtts://[SECRET]@broker.example.com:8883"),
        ("see https://example.com/a:b@c", "see https://example.com/a:b@c"),  # after the host: a path
    ],
)
def test_credentials_in_urls_are_secrets(text, expected):
    assert scrub(text) == expected
