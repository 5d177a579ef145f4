"""Field operations, one by one: edge cases and guarantees.

Expected values are worked out by hand in the comments or recomputed here with an
independent implementation (RFC 5869 HKDF and HMAC from the standard library, AES-SIV
decryption with our own derived key), never copied from a run of the code under test.
"""

# ruff: noqa: RUF001  (fullwidth and other scripts' characters are what these tests are about)

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import ipaddress
import math
import os
import stat
import time

import msgspec
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import UNSET
from reference import hkdf_sha256

from gateway.keys import KeyFileError, Keyring, keygen
from gateway.ops import (
    Bucket,
    BucketTime,
    CoarsenLocation,
    Drop,
    Encrypt,
    Generalise,
    Keep,
    Mask,
    Pseudonymise,
    Replace,
    Round,
    Scrub,
    TruncateIp,
)
from gateway.ops.base import BuildEnv, Epochs
from gateway.ops.identity import reveal

TEST_SECRET = b"gateway-inline-test-key-public!!"  # the documented public test key
NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
DAY = 86400
M_PER_DEG = 111_320.0
EARTH_R = 6_371_008.8


# -- independent reference implementations ----------------------------------------------




def expected_pseudonym(
    value, *, secret=TEST_SECRET, kid="test", domain="default", rotate="never", epoch="0", length=16, scope="pack:"
):
    info = f"telemetry-gateway/v1|pseudonymise|{scope}|{domain}|{rotate}|{epoch}".encode()
    key = hkdf_sha256(secret, info)
    mac = hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).digest()
    return f"{kid}." + base64.b32encode(mac).decode().lower()[:length]


def independent_decrypt(token: str, secret: bytes = TEST_SECRET) -> str:
    """``enc.<kid>.<scope>.<domain>.<data>`` (key per pack or link domain, and domain), or the
    older ``enc.<kid>.<data>`` (one key for everything)."""
    parts = token.split(".")
    assert parts[0] == "enc" and len(parts) in (3, 5)
    data = parts[-1]
    if len(parts) == 5:
        scope = parts[2] if parts[2].startswith("link:") else f"pack:{parts[2]}"
        info = f"telemetry-gateway/v1|encrypt|{scope}|{parts[3]}|aes-siv".encode()
    else:
        info = b"telemetry-gateway/v1|encrypt|aes-siv"
    key = hkdf_sha256(secret, info, 64)
    sealed = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return AESSIV(key).decrypt(sealed, None).decode("utf-8")


def haversine_m(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_R * math.asin(min(1.0, math.sqrt(a)))


def env(now: float = NOW, keyring: Keyring | None = None) -> BuildEnv:
    return BuildEnv(keyring or Keyring.test(), Epochs(now))


def build(cls, env_=None, **params):
    """Decode the parameters like the policy loader does, then build."""
    rule = msgspec.convert(params, cls)
    return rule.build(env_ or env())


# -- keys ---------------------------------------------------------------------------------


def test_derive_is_rfc5869_hkdf_over_the_master_secret():
    ring = Keyring.test()
    assert ring.derive("pseudonymise|device|never|0") == hkdf_sha256(
        TEST_SECRET, b"telemetry-gateway/v1|pseudonymise|device|never|0"
    )
    assert ring.derive("encrypt|aes-siv", length=64) == hkdf_sha256(
        TEST_SECRET, b"telemetry-gateway/v1|encrypt|aes-siv", 64
    )
    assert ring.derive("a") != ring.derive("b")


def test_keyring_validation_and_repr_hide_secrets():
    with pytest.raises(KeyFileError):
        Keyring("k1", {"k1": b"short"})
    with pytest.raises(KeyFileError):
        Keyring("k2", {"k1": b"x" * 32})
    with pytest.raises(KeyFileError):
        Keyring("K1", {"K1": b"x" * 32})
    ring = Keyring("k1", {"k1": b"s" * 32})
    assert "sss" not in repr(ring)
    with pytest.raises(KeyFileError):
        ring.derive("x", kid="nope")
    with pytest.raises(KeyFileError):
        Keyring.from_json(b'{"active": "k1", "keys": {"k1": "not base64!"}}')


def test_keygen_writes_0600_and_rotates(tmp_path):
    path = tmp_path / "keys.json"
    assert keygen(path) == "k1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(KeyFileError):
        keygen(path)  # never overwrites
    assert keygen(path, rotate=True) == "k2"
    ring = Keyring.from_file(path)
    assert ring.active == "k2" and ring.ids == ["k1", "k2"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Keyring.from_json(ring.to_json()).derive("x", kid="k1") == ring.derive("x", kid="k1")


# -- pseudonymise -------------------------------------------------------------------------


def test_pseudonym_matches_independent_hkdf_hmac_base32():
    fn = build(Pseudonymise, path="d", domain="device")
    assert fn("866123456789012") == expected_pseudonym("866123456789012", domain="device")
    out = fn("abc")
    assert out.startswith("test.") and len(out) == len("test.") + 16
    assert set(out[5:]) <= set("abcdefghijklmnopqrstuvwxyz234567")


@pytest.mark.parametrize("length", [8, 16, 31, 52])
def test_pseudonym_length(length):
    fn = build(Pseudonymise, path="d", length=length)
    assert fn("x") == expected_pseudonym("x", length=length)
    assert len(fn("x")) == 5 + length


def test_pseudonym_int_and_str_input_agree_and_is_stable():
    fn = build(Pseudonymise, path="d")
    want = expected_pseudonym("12345")
    assert fn(12345) == want
    assert fn("12345") == want
    assert fn(12345) == want  # cached
    assert fn(-7) == expected_pseudonym("-7")
    # a second, independently built instance agrees
    assert build(Pseudonymise, path="other")("12345") == want


def test_pseudonym_unicode_value():
    fn = build(Pseudonymise, path="d")
    assert fn("Jane’s phone ☎") == expected_pseudonym("Jane’s phone ☎")


def test_pseudonym_domains_and_keys_separate():
    value = "device-1"
    a = build(Pseudonymise, path="d", domain="device")(value)
    b = build(Pseudonymise, path="d", domain="user")(value)
    assert a != b
    assert b == expected_pseudonym(value, domain="user")
    secret = bytes(range(32))
    ring = Keyring("k7", {"k7": secret})
    c = build(Pseudonymise, env(keyring=ring), path="d", domain="device")(value)
    assert c == expected_pseudonym(value, secret=secret, kid="k7", domain="device")
    assert c.split(".")[1] != a.split(".")[1]


def test_pseudonym_daily_rotation_changes_at_utc_midnight():
    e = env(NOW)  # 2023-11-14T22:13:20Z
    fn = build(Pseudonymise, e, path="d", rotate="daily")
    day1 = expected_pseudonym("dev", rotate="daily", epoch="2023-11-14")
    assert fn("dev") == day1
    e.epochs.advance(NOW + 3600)  # 23:13 the same day
    assert fn("dev") == day1
    e.epochs.advance(NOW + 2 * 3600)  # 00:13 next day
    day2 = expected_pseudonym("dev", rotate="daily", epoch="2023-11-15")
    assert fn("dev") == day2 != day1
    e.epochs.advance(NOW)  # back in time: back to the old epoch
    assert fn("dev") == day1


def test_pseudonym_monthly_and_never_rotation():
    e = env(NOW)
    monthly = build(Pseudonymise, e, path="d", rotate="monthly")
    never = build(Pseudonymise, e, path="d")
    m1 = expected_pseudonym("dev", rotate="monthly", epoch="2023-11")
    n = expected_pseudonym("dev")
    assert monthly("dev") == m1 and never("dev") == n
    e.epochs.advance(NOW + 3 * DAY)  # 2023-11-17: same month
    assert monthly("dev") == m1 and never("dev") == n
    e.epochs.advance(NOW + 20 * DAY)  # 2023-12-04
    assert monthly("dev") == expected_pseudonym("dev", rotate="monthly", epoch="2023-12") != m1
    assert never("dev") == n


def test_pseudonym_keep_prefix():
    fn = build(Pseudonymise, path="imei", keep_prefix=8, shape="imei")
    imei = "490154203237518"
    assert fn(imei) == "49015420-" + expected_pseudonym(imei)
    assert fn(int(imei)) == "49015420-" + expected_pseudonym(imei)
    # a value that is not an IMEI keeps nothing: too short, a phone, a bad check digit, an e-mail
    for other in ["49015420", "4901", "9876543210", "+919876543210", "490154203237519", "asha.rao@example.com",
                  "４９０１５４２０３２３７５１８", "49015420323751８", " 490154203237518", "4901542032375180"]:
        assert fn(other) == expected_pseudonym(other), other


def test_default_shapes_are_imei_for_a_prefix_and_vpa_after_an_at():
    prefix = build(Pseudonymise, path="imei", keep_prefix=8)
    after = build(Pseudonymise, path="vpa", keep_after="@")
    assert prefix("490154203237518") == "49015420-" + expected_pseudonym("490154203237518")
    assert prefix("9876543210") == expected_pseudonym("9876543210")
    assert after("alice@okaxis") == expected_pseudonym("alice@okaxis") + "@okaxis"
    assert after("okaxis@9876543210") == expected_pseudonym("okaxis@9876543210")
    pattern = build(Pseudonymise, path="x", keep_after="-", pattern="[a-z]+-[a-z]{2}")
    assert pattern("asha-in") == expected_pseudonym("asha-in") + "-in"
    assert pattern("asha-9876543210") == expected_pseudonym("asha-9876543210")


def test_pseudonym_keep_after():
    fn = build(Pseudonymise, path="vpa", keep_after="@", shape="vpa")
    assert fn("alice@okaxis") == expected_pseudonym("alice@okaxis") + "@okaxis"
    assert fn("9876543210@ybl") == expected_pseudonym("9876543210@ybl") + "@ybl"
    # not a VPA with a bank handle of letters: the whole value is pseudonymised
    for other in ["alice", "a@b@okicici", "okaxis@9876543210", "asha@example.com", "asha@ok axis",
                  "upi://pay?pa=asha@okaxis&pn=Asha%20Rao&tn=call%20+919876543210", "asha@okaxis\n9876543210",
                  "asha@ｏｋａｘｉｓ", "asha@", "@okaxis"]:
        assert fn(other) == expected_pseudonym(other), other


def test_pseudonym_never_contains_0_1_8_9():
    fn = build(Pseudonymise, path="d", length=52)
    for i in range(200):
        out = fn(f"value-{i}")
        assert not set(out) & set("0189")


# -- encrypt ------------------------------------------------------------------------------


def test_encrypt_round_trip_and_independent_decryption():
    fn = build(Encrypt, path="ref")
    for value in ["UPI/412345678901/x", "", "日本語 ✓", "a" * 1000]:
        token = fn(value)
        assert token.startswith("enc.test.")
        assert reveal(Keyring.test(), token) == value
        assert independent_decrypt(token) == value
    token = fn(412345678901)
    assert reveal(Keyring.test(), token) == "412345678901"
    assert "412345678901" not in token


def test_encrypt_is_deterministic_across_instances_and_distinct_per_value():
    a, b = build(Encrypt, path="x"), build(Encrypt, path="x")
    assert a("ref-1") == b("ref-1") == a("ref-1")
    assert a("ref-1") != a("ref-2")
    assert a(5) == a("5")


def test_encrypt_keys_are_per_field_unless_a_domain_is_shared():
    x, y = build(Encrypt, path="x"), build(Encrypt, path="y.z[]")
    assert x("+919876543210") != y("+919876543210")
    assert y("+919876543210").startswith("enc.test..y_z.")  # no pack here: an empty scope label
    shared = [build(Encrypt, path=p, domain="phone") for p in ("x", "y")]
    assert shared[0]("+919876543210") == shared[1]("+919876543210")
    for fn in (x, y, *shared):
        assert reveal(Keyring.test(), fn("+919876543210")) == "+919876543210"
        assert independent_decrypt(fn("+919876543210")) == "+919876543210"


def test_reveal_with_wrong_key_or_unknown_kid_fails():
    token = build(Encrypt, path="x")("secret-ref")
    with pytest.raises(ValueError):
        reveal(Keyring("test", {"test": b"another-secret-of-32-bytes-long!"}), token)
    with pytest.raises(ValueError):
        reveal(Keyring("k1", {"k1": TEST_SECRET}), token)  # same secret, but no key id "test"


def test_reveal_after_key_rotation():
    old = Keyring("k1", {"k1": b"1" * 32})
    token = build(Encrypt, env(keyring=old), path="x")("ref")
    assert token.startswith("enc.k1.")
    rotated = Keyring("k2", {"k1": b"1" * 32, "k2": b"2" * 32})
    assert reveal(rotated, token) == "ref"
    new = build(Encrypt, env(keyring=rotated), path="x")("ref")
    assert new.startswith("enc.k2.") and reveal(rotated, new) == "ref"


def test_reveal_tampered_or_malformed_fails():
    token = build(Encrypt, path="x")("secret-ref-value")
    prefix, kid, data = token.split(".", 2)
    mid = len(data) // 2
    flipped = data[:mid] + ("A" if data[mid] != "A" else "B") + data[mid + 1 :]
    for bad in [
        f"{prefix}.{kid}.{flipped}",
        f"{prefix}.{kid}.{data[:-4]}",  # truncated
        f"{prefix}.{kid}.",
        f"xxx.{kid}.{data}",
        "enc.test",
        "plain text",
        f"{prefix}.{kid}.!!!!",
    ]:
        with pytest.raises(ValueError):
            reveal(Keyring.test(), bad)


# -- truncate_ip --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params, value, expected",
    [
        ({}, "203.0.113.77", "203.0.113.0"),
        ({}, " 203.0.113.77 ", "203.0.113.0"),
        ({"ipv4_prefix": 16}, "203.0.113.77", "203.0.0.0"),
        ({"ipv4_prefix": 20}, "10.1.255.9", "10.1.240.0"),  # 255 = 1111 1111 -> 1111 0000
        ({"ipv4_prefix": 0}, "203.0.113.77", "0.0.0.0"),
        ({"ipv4_prefix": 32}, "203.0.113.77", "203.0.113.77"),
        ({}, "2001:db8:abcd:1234:5678::1", "2001:db8:abcd::"),
        ({}, "2001:DB8:ABCD:1234::1", "2001:db8:abcd::"),
        ({"ipv6_prefix": 64}, "2001:db8:abcd:1234:5678::1", "2001:db8:abcd:1234::"),
        ({"ipv6_prefix": 56}, "2001:db8:abcd:12ff::1", "2001:db8:abcd:1200::"),
        ({"ipv6_prefix": 0}, "2001:db8::1", "::"),
        ({"ipv6_prefix": 128}, "2001:db8::1", "2001:db8::1"),
        ({}, "fe80::1:2:3:4%eth0", "fe80::"),
        # IPv4-mapped: truncated with the IPv4 prefix, not the (too long) IPv6 one
        ({}, "::ffff:203.0.113.77", "::ffff:203.0.113.0"),
        ({}, "::FFFF:cb00:714d", "::ffff:203.0.113.0"),  # 0xcb00714d = 203.0.113.77
        ({"ipv4_prefix": 8}, "::ffff:203.0.113.77", "::ffff:203.0.0.0"),
        ({"ipv6_prefix": 128}, "::ffff:203.0.113.77", "::ffff:203.0.113.0"),
    ],
)
def test_truncate_ip(params, value, expected):
    assert build(TruncateIp, path="ip", **params)(value) == expected


@pytest.mark.parametrize("address", ["2002:cb00:714d::1", "2002:cb00:714d:ffff::1"])
def test_truncate_ip_6to4_does_not_keep_the_whole_embedded_ipv4(address):
    """6to4 (2002::/16) carries the site's IPv4 address in bits 16-48, so a /48 keeps
    all of 203.0.113.77: the IPv4 host must be truncated like an IPv4 or mapped address."""
    out = build(TruncateIp, path="ip")(address)
    embedded = ipaddress.IPv6Address(out).sixtofour
    assert embedded is None or str(embedded) != "203.0.113.77", out


@pytest.mark.parametrize(
    "bad", ["", "not an ip", "256.1.1.1", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.2.3.4/24", "gggg::1", "12345"]
)
def test_truncate_ip_invalid_is_removed_and_counted(bad):
    e = env()
    fn = build(TruncateIp, e, path="client.ip")
    assert fn(bad) is UNSET
    assert e.stats[("client.ip", "invalid_ip")] == 1
    assert fn(bad) is UNSET  # never cached as a value
    assert e.stats[("client.ip", "invalid_ip")] == 2


def test_truncate_ip_label_uses_name():
    e = env()
    fn = build(TruncateIp, e, path="ip", name="login_ip")
    fn("nope")
    assert e.stats[("login_ip", "invalid_ip")] == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_truncate_ipv4_property(addr, prefix):
    fn = build(TruncateIp, path="ip", ipv4_prefix=prefix)
    text = ".".join(str((addr >> s) & 255) for s in (24, 16, 8, 0))
    mask = 0 if prefix == 0 else (2**32 - 1) ^ (2 ** (32 - prefix) - 1)
    out = addr & mask
    assert fn(text) == ".".join(str((out >> s) & 255) for s in (24, 16, 8, 0))
    assert fn("::ffff:" + text) == "::ffff:" + ".".join(str((out >> s) & 255) for s in (24, 16, 8, 0))


# -- coarsen_location ---------------------------------------------------------------------


def coarsen(env_=None, **params):
    params.setdefault("lat", "lat")
    params.setdefault("lon", "lon")
    return build(CoarsenLocation, env_, **params)


def no_negative_zero(point):
    return all(math.copysign(1.0, x) == 1.0 or x != 0 for x in point)


def test_decimals_mode():
    fn = coarsen(decimals=2)
    assert fn(12.97159, 77.59456, False) == (12.97, 77.59)
    assert fn(-33.86785, 151.20732, False) == (-33.87, 151.21)
    assert fn(12.9716, 77.5946, False) == fn(12.9749, 77.5901, False)
    out = fn(-0.001, -0.004, False)
    assert out == (0.0, 0.0) and no_negative_zero(out)
    assert coarsen(decimals=0)(12.6, -77.4, False) == (13.0, -77.0)


def test_decimals_mode_extremes():
    fn = coarsen(decimals=1)
    assert fn(90.0, 180.0, False) == (90.0, 180.0)
    assert fn(-90.0, -180.0, False) == (-90.0, -180.0)


@pytest.mark.parametrize(
    "bad",
    [
        (91.0, 0.0),
        (-90.0001, 0.0),
        (0.0, 180.0001),
        (0.0, -181.0),
        (math.nan, 0.0),
        (0.0, math.nan),
        (math.inf, 0.0),
        (0.0, -math.inf),
    ],
)
@pytest.mark.parametrize("params", [{"decimals": 2}, {"grid_m": 1000}, {"grid_m": 1000, "consent": "loc"}])
def test_invalid_point_is_removed_and_counted(bad, params):
    e = env()
    fn = coarsen(e, **params)
    assert fn(*bad, False) is None
    assert fn(*bad, True) is None
    assert e.stats[("lat,lon", "invalid_location")] == 2


@settings(max_examples=200, deadline=None)
@given(
    lat=st.floats(-85, 85),
    lon=st.floats(-180, 180),
    grid_m=st.sampled_from([10, 100, 500, 1000, 5000, 20000]),
)
def test_grid_output_is_near_input_and_cells_are_consistent(lat, lon, grid_m):
    fn = coarsen(grid_m=grid_m)
    clat, clon = fn(lat, lon, False)
    assert -90 <= clat <= 90 and -180 <= clon <= 180
    # the centre of a cell about grid_m wide: no farther than about half its diagonal
    assert haversine_m(lat, lon, clat, clon) <= grid_m * 0.75
    # the centre is in its own cell, and so is every point near it
    assert fn(clat, clon, False) == (clat, clon)
    dlat = 0.25 * grid_m / M_PER_DEG
    dlon = 0.25 * grid_m / (M_PER_DEG * math.cos(math.radians(clat)))
    for a, b in [(dlat, 0), (-dlat, 0), (0, dlon), (0, -dlon), (dlat, dlon), (-dlat, -dlon)]:
        plat, plon = clat + a, clon + b
        if -90 <= plat <= 90 and -180 <= plon <= 180:
            assert fn(plat, plon, False) == (clat, clon)


def test_grid_separates_points_10_km_apart():
    fn = coarsen(grid_m=1000)
    lat, lon = 12.9716, 77.5946
    step = 10_000 / M_PER_DEG
    assert fn(lat, lon, False) != fn(lat + step, lon, False)
    assert fn(lat, lon, False) != fn(lat, lon + step / math.cos(math.radians(lat)), False)
    # and 100 m apart in the middle of a cell usually coincide: the centre and a neighbour
    c = fn(lat, lon, False)
    assert fn(c[0] + 100 / M_PER_DEG, c[1], False) == c


@pytest.mark.parametrize("grid_m", [100, 1000, 5000, 20000])
@pytest.mark.parametrize("lat", [90.0, -90.0, 89.9999, -89.9999])
def test_grid_at_the_poles(grid_m, lat):
    fn = coarsen(grid_m=grid_m)
    out = fn(lat, 10.0, False)
    assert out is not None
    assert -90 <= out[0] <= 90 and -180 <= out[1] <= 180
    assert abs(out[0] - lat) <= grid_m / M_PER_DEG


@pytest.mark.parametrize("grid_m", [1000, 5000, 20000, 111_320])
@pytest.mark.parametrize("lat", [0.0, 10.0, 12.9716, 45.0, 60.5, -33.9])
def test_grid_antimeridian_180_and_minus_180_share_a_cell(grid_m, lat):
    """lon 180 and lon -180 are the same meridian: they must be snapped to the same centre."""
    fn = coarsen(grid_m=grid_m)
    east, west = fn(lat, 180.0, False), fn(lat, -180.0, False)
    assert east == west
    # no cell straddles the antimeridian: both sides snap into [-180, 180]
    assert -180 <= fn(lat, 179.99999, False)[1] <= 180
    assert -180 <= fn(lat, -179.99999, False)[1] <= 180


def test_privacy_zone_suppresses_even_with_consent():
    zone = {"lat": 12.9716, "lon": 77.5946, "radius_m": 500}
    e = env()
    fn = coarsen(e, grid_m=1000, consent="precise", zones=[zone])
    inside = (12.9716 + 300 / M_PER_DEG, 77.5946)  # 300 m north
    outside = (12.9716 + 700 / M_PER_DEG, 77.5946)  # 700 m north
    assert fn(*inside, False) is None
    assert fn(*inside, True) is None
    assert e.stats[("lat,lon", "in_privacy_zone")] == 2
    assert fn(*outside, False) is not None
    assert fn(*outside, True) == outside


def test_privacy_zone_across_the_antimeridian():
    fn = coarsen(decimals=1, zones=[{"lat": 0.0, "lon": 179.999, "radius_m": 1000}])
    assert fn(0.0, -179.999, False) is None  # about 220 m away, across +-180
    assert fn(0.0, -179.9, False) is not None  # about 11 km away


def test_consent_without_consent_decimals_gives_the_exact_point():
    fn = coarsen(grid_m=1000, consent="precise_location")
    assert fn(12.971599, 77.594566, True) == (12.971599, 77.594566)
    assert fn(12.971599, 77.594566, False) != (12.971599, 77.594566)


def test_consent_decimals():
    fn = coarsen(grid_m=5000, consent="precise_location", consent_decimals=4)
    assert fn(12.971599, 77.594566, True) == (12.9716, 77.5946)
    coarse = fn(12.971599, 77.594566, False)
    assert haversine_m(12.971599, 77.594566, *coarse) <= 5000 * 0.75
    assert coarse != (12.9716, 77.5946)


def test_fixed_mode_reports_one_point_whatever_the_input():
    params = {"grid_m": 1000, "mode": "fixed", "at": [12.9716, 77.5946]}
    fn = coarsen(**params)
    grid = coarsen(grid_m=1000)
    expected = grid(12.9716, 77.5946, False)
    for point in [(12.9716, 77.5946), (12.98, 77.6), (-45.0, 100.0), (90.0, 180.0), (0.0, 0.0)]:
        assert fn(*point, False) == expected
        assert fn(*point, True) == expected
    assert fn(math.nan, 0.0, False) is None


# -- round / bucket / bucket_time ---------------------------------------------------------


@pytest.mark.parametrize(
    "params, value, expected",
    [
        ({"decimals": 1}, 87.34, 87.3),
        ({"decimals": 0}, 87.6, 88.0),
        ({"decimals": 2}, -1.234, -1.23),
        ({"decimals": -2}, 1234, 1200),
        ({"decimals": 1}, 7, 7),
        ({"step": 5}, 63, 65),
        ({"step": 5}, 62, 60),
        ({"step": 5}, 62.4, 60.0),
        ({"step": 0.5}, 1.26, 1.5),
        ({"step": 0.1}, 0.3, 0.3),
        ({"step": 0.25}, 10.4, 10.5),
        ({"step": 1000}, 123_456, 123_000),
    ],
)
def test_round(params, value, expected):
    out = build(Round, path="x", **params)(value)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize("params", [{"decimals": 1}, {"step": 5}, {"step": 0.5}])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_round_non_finite_is_removed(params, value):
    assert build(Round, path="x", **params)(value) is UNSET


@pytest.mark.parametrize(
    "params, value, expected",
    [
        ({"step": 10}, 87, 80),
        ({"step": 10}, 80, 80),
        ({"step": 10}, -3, -10),
        ({"step": 10}, 87.5, 80.0),
        ({"step": 0.5}, 1.74, 1.5),
        ({"step": 0.5}, 1.5, 1.5),
        ({"step": 0.25}, -0.1, -0.25),
    ],
)
def test_bucket_step(params, value, expected):
    out = build(Bucket, path="x", **params)(value)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize("value, expected", [(0.3, 0.3), (0.6, 0.6), (0.7, 0.7), (1.1, 1.1), (0.35, 0.3), (2.0, 2.0)])
def test_bucket_decimal_step_floors_exact_multiples_to_themselves(value, expected):
    """0.3 is a multiple of 0.1: flooring it to a multiple of 0.1 must give 0.3, not 0.2."""
    assert build(Bucket, path="x", step=0.1)(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (-5, "<10"),
        (9.999, "<10"),
        (10, "10-50"),
        (49.9, "10-50"),
        (50, "50-100"),
        (99, "50-100"),
        (100, ">=100"),
        (1e9, ">=100"),
    ],
)
def test_bucket_edges(value, expected):
    assert build(Bucket, path="x", edges=[10, 50, 100])(value) == expected


def test_bucket_fractional_edges_and_non_finite():
    fn = build(Bucket, path="x", edges=[0.5, 1.5])
    assert [fn(0.1), fn(0.5), fn(1.0), fn(1.5), fn(7)] == ["<0.5", "0.5-1.5", "0.5-1.5", ">=1.5", ">=1.5"]
    assert fn(math.nan) is UNSET
    assert build(Bucket, path="x", step=10)(math.inf) is UNSET


T_2023_11_14_22_13_20 = 1_700_000_000  # calendar.timegm((2023, 11, 14, 22, 13, 20))


@pytest.mark.parametrize(
    "params, value, expected",
    [
        ({"to": "hour"}, "2026-11-23T10:17:42Z", "2026-11-23T10:00:00Z"),
        ({"to": "hour"}, "2026-11-23T10:17:42.987654Z", "2026-11-23T10:00:00Z"),
        ({"to": "hour"}, "2026-11-23T10:17:42+05:30", "2026-11-23T04:00:00Z"),  # 04:47:42 UTC
        ({"to": "hour"}, "2026-11-23T10:17:42-03:00", "2026-11-23T13:00:00Z"),
        ({"to": "hour"}, "2026-11-23T10:17:42", "2026-11-23T10:00:00Z"),  # naive = UTC
        ({"to": "hour"}, " 2026-11-23 10:17:42 ", "2026-11-23T10:00:00Z"),
        ({"to": "minute"}, "2026-11-23T10:17:42Z", "2026-11-23T10:17:00Z"),
        ({"to": "day"}, "2026-11-23T02:00:00+05:30", "2026-11-22T00:00:00Z"),  # 20:30 UTC the day before
        ({"to": "day"}, "2026-11-23", "2026-11-23T00:00:00Z"),
        ({"to": "month"}, "2026-11-23T10:17:42Z", "2026-11-01T00:00:00Z"),
        ({"to": "month"}, "2026-12-01T01:00:00+05:30", "2026-11-01T00:00:00Z"),  # 2026-11-30T19:30Z
        ({"seconds": 900}, "2026-11-23T10:17:42Z", "2026-11-23T10:15:00Z"),
        ({"to": "hour"}, 1_700_000_000, 1_699_999_200),  # 22:13:20 -> 22:00:00
        ({"to": "hour"}, 1_700_000_000.75, 1_699_999_200.0),
        ({"to": "hour"}, 1_700_000_000_123, 1_699_999_200_000),  # milliseconds stay milliseconds
        ({"to": "day"}, 1_700_000_000, calendar.timegm((2023, 11, 14, 0, 0, 0))),
        ({"to": "day"}, 1_700_000_000_123, calendar.timegm((2023, 11, 14, 0, 0, 0)) * 1000),
        ({"to": "month"}, 1_700_000_000, calendar.timegm((2023, 11, 1, 0, 0, 0))),
        ({"to": "minute"}, 0, 0),
        ({"to": "minute"}, -30, -60),
        ({"seconds": 900}, 1_700_000_000, 1_699_999_200),  # 22:13:20 -> 22:00:00 (the quarter from 22:00)
    ],
)
def test_bucket_time(params, value, expected):
    out = build(BucketTime, path="ts", **params)(value)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize(
    "bad",
    ["yesterday", "", "2026-13-01T00:00:00Z", "2026-11-31", "10:17", "2026-11-23T25:00:00Z", math.nan, math.inf, 1e300],
)
def test_bucket_time_invalid_is_removed_and_counted(bad):
    e = env()
    fn = build(BucketTime, e, path="ts", to="month")
    assert fn(bad) is UNSET
    assert e.stats[("ts", "invalid_time")] == 1


# -- mask / replace / generalise / scrub / drop / keep ------------------------------------


@pytest.mark.parametrize(
    "params, value, expected",
    [
        ({}, "4111111111111111", "************1111"),
        ({}, 9876543210, "******3210"),
        ({}, "abcde", "*****"),  # fewer masked than kept: fully masked (4 of a 5-digit PIN would show)
        ({}, "abcdefg", "*******"),
        ({}, "abcdefgh", "****efgh"),
        ({}, "abcd", "****"),  # no longer than keep_last: fully masked
        ({"keep_last": 8}, "12345678x@ex.com", "****************"),  # the tail would show an e-mail
        ({"keep_last": 8}, "0123456789abcdefgh", "**********abcdefgh"),
        ({}, "ab", "**"),
        ({}, "", ""),
        ({"keep_last": 0}, "secret", "******"),
        ({"keep_last": 2, "char": "#"}, "98765", "###65"),
        ({"keep_last": 2, "char": "#"}, "987", "###"),
        ({"keep_last": 8}, "12345678", "********"),
        ({}, "héllo wörld", "*******örld"),
        ({}, "日本語テキスト", "*******"),  # 7 characters: 3 masked < 4 kept
        ({}, "日本語のテキスト", "****テキスト"),
        ({"keep_last": 1, "char": "•"}, "😀😀😀", "••😀"),
    ],
)
def test_mask(params, value, expected):
    assert build(Mask, path="x", **params)(value) == expected


def test_replace_and_drop_and_keep():
    fn = build(Replace, path="x", value="redacted")
    assert fn("anything") == fn(42) == fn(None) == "redacted"
    assert build(Replace, path="x", value=0)("x") == 0
    assert build(Keep, path="x")(obj := {"a": [1]}) is obj
    with pytest.raises(AssertionError):
        build(Drop, path="x")


def test_generalise_exact():
    fn = build(Generalise, path="os", map={"Android 14": "Android", "iOS 17": "iOS", "14": "fourteen", "true": "yes"})
    assert fn("Android 14") == "Android"
    assert fn("iOS 17") == "iOS"
    assert fn("Android 14.1") == "other"  # exact: no prefix matching
    assert fn(14) == "fourteen"
    assert fn(True) == "yes"
    assert fn(False) == "other"
    custom = build(Generalise, path="os", map={"a": 1}, default=0)
    assert custom("b") == 0 and custom("a") == 1


def test_generalise_prefix_longest_wins():
    fn = build(
        Generalise, path="os", match="prefix", map={"Android": "A", "Android 14": "A14", "iOS": "I"}, default="?"
    )
    assert fn("Android 14.1") == "A14"
    assert fn("Android 13") == "A"
    assert fn("Android") == "A"
    assert fn("iOS 17.2") == "I"
    assert fn("HarmonyOS") == "?"
    assert fn("android 14") == "?"  # case-sensitive


def test_scrub_replaces_identifiers_with_typed_tokens():
    fn = build(Scrub, path="log")
    text = "user alice@example.com paid 4111 1111 1111 1111 from 203.0.113.7 password=hunter2 call +91 98765 43210"
    assert fn(text) == "user [EMAIL] paid [CARD] from [IP] password=[SECRET] call [PHONE]"
    assert fn("all clear") == "all clear"


def test_scrub_detector_subset():
    fn = build(Scrub, path="log", detectors=["email"])
    assert fn("alice@example.com +91 98765 43210") == "[EMAIL] +91 98765 43210"


# -- parameter validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, params",
    [
        (Pseudonymise, {"length": 7}),
        (Pseudonymise, {"length": 53}),
        (Pseudonymise, {"length": "16"}),
        (Pseudonymise, {"keep_prefix": -1}),
        (Pseudonymise, {"keep_prefix": 2, "keep_after": "@"}),
        (Pseudonymise, {"keep_prefix": 12}),  # more than an IMEI's TAC needs a pattern
        (Pseudonymise, {"keep_after": "-"}),  # a separator other than @ needs a pattern
        (Pseudonymise, {"keep_prefix": 8, "handles": ["okaxis"]}),
        (Pseudonymise, {"keep_prefix": 9, "shape": "imei"}),  # more than the TAC
        (Pseudonymise, {"keep_after": "-", "shape": "vpa"}),
        (Pseudonymise, {"keep_prefix": 8, "shape": "vpa"}),
        (Pseudonymise, {"keep_after": "@", "shape": "imei"}),
        (Pseudonymise, {"shape": "imei"}),  # a shape without an affix
        (Pseudonymise, {"pattern": "[0-9]+"}),
        (Pseudonymise, {"on_mismatch": "reject"}),
        (Pseudonymise, {"keep_after": "@", "shape": "vpa", "handles": ["OK AXIS"]}),
        (Pseudonymise, {"keep_after": "@", "pattern": "([a-z"}),
        (Pseudonymise, {"keep_after": "@", "pattern": "[a-z]+@[a-z]+", "shape": "vpa"}),
        (Pseudonymise, {"link_domain": "Fleet Wide"}),
        (Encrypt, {"domain": "not an identifier"}),
        (Encrypt, {"link_domain": "-x"}),
        (Pseudonymise, {"domain": "a-b"}),
        (Pseudonymise, {"domain": ""}),
        (Pseudonymise, {"rotate": "hourly"}),
        (Pseudonymise, {"lenght": 16}),  # typo: unknown field
        (Pseudonymise, {"op": "encrypt"}),
        (TruncateIp, {"ipv4_prefix": 33}),
        (TruncateIp, {"ipv4_prefix": -1}),
        (TruncateIp, {"ipv6_prefix": 129}),
        (CoarsenLocation, {"lat": "a", "lon": "b"}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 1000, "decimals": 2}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 0.5}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 30_000_000}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "decimals": 7}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "decimals": -1}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "decimals": 2, "consent_decimals": 4}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "decimals": 2, "consent": "x", "consent_decimals": 9}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 1000, "mode": "fixed"}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 1000, "mode": "fixed", "at": [91.0, 0.0]}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 1000, "mode": "fixed", "at": [1.0, 2.0], "consent": "x"}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 1000, "at": [1.0, 2.0]}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 1000, "zones": [{"lat": 0, "lon": 0, "radius_m": 0}]}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 1000, "zones": [{"lat": 95, "lon": 0, "radius_m": 10}]}),
        (CoarsenLocation, {"lat": "a", "lon": "b", "grid_m": 1000, "zones": [{"lat": 0, "lon": 0}]}),
        (CoarsenLocation, {"lon": "b", "grid_m": 1000}),
        (Round, {}),
        (Round, {"decimals": 1, "step": 5}),
        (Round, {"step": 0}),
        (Round, {"step": -1}),
        (Round, {"decimals": 10}),
        (Bucket, {}),
        (Bucket, {"step": 0}),
        (Bucket, {"edges": []}),
        (Bucket, {"edges": [3, 1]}),
        (Bucket, {"edges": [1, 1, 2]}),
        (Bucket, {"step": 1, "edges": [1]}),
        (BucketTime, {}),
        (BucketTime, {"to": "week"}),
        (BucketTime, {"to": "hour", "seconds": 60}),
        (BucketTime, {"seconds": 0}),
        (BucketTime, {"seconds": 31 * 86400 + 1}),
        (Mask, {"keep_last": 9}),
        (Mask, {"keep_last": -1}),
        (Mask, {"char": ""}),
        (Mask, {"char": "**"}),
        (Generalise, {"map": {}}),
        (Generalise, {}),
        (Generalise, {"map": {"a": "b"}, "match": "regex"}),
        (Scrub, {"detectors": ["bogus"]}),
        (Keep, {"guard_allow": ["bogus"]}),
        (Keep, {"type": "str"}),
        (Replace, {}),
        (Replace, {"value": [1, 2]}),
    ],
)
def test_bad_parameters_are_validation_errors(cls, params):
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"path": "x", **params} if cls is not CoarsenLocation else params, cls)


@pytest.mark.parametrize(
    "cls, params",
    [
        (Pseudonymise, {"op": "pseudonymise", "length": 8, "keep_after": "@", "shape": "vpa", "rotate": "daily"}),
        (TruncateIp, {"ipv4_prefix": 0, "ipv6_prefix": 128}),
        (Round, {"decimals": -9}),
        (Bucket, {"edges": [1.5]}),
        (BucketTime, {"seconds": 1}),
        (Mask, {"keep_last": 0, "char": "#"}),
        (Keep, {"type": "number", "guard_allow": ["ip"]}),
        (Scrub, {"detectors": []}),
    ],
)
def test_good_parameters_are_accepted(cls, params):
    assert isinstance(msgspec.convert({"path": "x", **params}, cls), cls)


def test_good_coarsen_parameters_are_accepted():
    rule = msgspec.convert(
        {
            "lat": "a",
            "lon": "b",
            "grid_m": 1,
            "consent": "x",
            "consent_decimals": 8,
            "zones": [{"lat": 90, "lon": -180, "radius_m": 1}],
        },
        CoarsenLocation,
    )
    assert rule.grid_m == 1


# -- fused forms (gateway.policy.codegen pastes them into the hot path) -------------------
# Each must compute exactly what the call does: same value, same type (1 is not 1.0), same
# removal (UNSET), same counters.


def fused(fn):
    """The operation with its inline form pasted in, as the plan's code generator does."""
    form = fn.inline("_t_", "False") if fn.inline is not None else None
    if form is None:  # no inline form for these parameters: the generator calls fn
        return fn
    test, lines, names = form
    assert all(name.startswith("_t_") for name in names)
    body = "".join(f"        {line}\n" for line in lines)
    source = f"def f(v):\n    if {test}:\n{body}        return v\n    return fn(v)\n"
    ns = {"UNSET": UNSET, "fn": fn, **names}
    exec(source, ns)
    return ns["f"]


def fused_only(fn):
    """Only the inline part: None where the test does not hold."""
    test, lines, names = fn.inline("_t_", "False")
    body = "".join(f"        {line}\n" for line in lines)
    ns = {"UNSET": UNSET, **names}
    exec(f"def f(v):\n    if {test}:\n{body}        return v\n    return None\n", ns)
    return ns["f"]


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a.__class__ is b.__class__ and (
        a == b if not isinstance(a, float) else math.copysign(1, a) == math.copysign(1, b) and a == b
    )


INT_EDGES = [
    0,
    1,
    -1,
    2,
    3,
    5,
    7,
    22,
    23,
    25,
    45,
    67,
    2**31 - 1,
    -(2**31) + 1,
    2**31,
    -(2**31),
    2**53 + 1,
    10**400,
    -(10**400),
]
numbers_in = st.one_of(
    st.integers(-(2**33), 2**33),
    st.integers(),
    st.sampled_from(INT_EDGES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
    st.integers(-1000, 1000).map(lambda n: n / 2),  # exact halves: round half to even
)
STEPS = [1, 2, 5, 10, 45, 1000, 2**20, 2**21, 3e6, 0.5, 0.1, 0.25, 1e-5, 2.5]


@settings(max_examples=400, deadline=None)
@given(value=numbers_in, step=st.sampled_from(STEPS), cls=st.sampled_from([Round, Bucket]))
def test_fused_round_and_bucket_equal_the_transform(value, step, cls):
    e1, e2 = env(), env()
    fn = build(cls, e1, path="x", step=step)
    ref = build(cls, e2, path="x", step=step)
    out = fused(fn)(value)
    assert same(out, ref(value)) or (out is UNSET and ref(value) is UNSET), (value, step, out, ref(value))
    assert e1.stats == e2.stats


@pytest.mark.parametrize("cls", [Round, Bucket])
@pytest.mark.parametrize("step", [5, 45, 10, 2])
def test_fused_int_path_half_cases_exhaustively(cls, step):
    """Every int in a window around 0 and around +-2**31 (where the inline path ends)."""
    fn = build(cls, path="x", step=step)
    f, inline = fused(fn), fused_only(fn)
    for base in (0, 2**31, -(2**31)):
        for value in range(base - 300, base + 300):
            assert same(f(value), fn(value)), value
    assert all(same(inline(v), fn(v)) for v in range(-300, 300))  # and these do take the inline path
    assert inline(2**31) is None and inline(2.0) is None and inline(None) is None and inline(UNSET) is None


def test_huge_numbers_are_removed_and_counted_not_raised():
    e = env()
    for cls in (Round, Bucket):
        fn = build(cls, e, path="n", step=5)
        assert fn(10**400) is UNSET and fn(-(10**400)) is UNSET
        assert fused(fn)(10**400) is UNSET
    assert e.stats[("n", "invalid_number")] == 6
    assert build(Bucket, path="n", step=1e-300)(1e300) is UNSET  # an infinite quotient
    assert build(Round, path="n", decimals=2)(10**400) == 10**400  # an int has no decimals to round
    assert build(Bucket, path="n", edges=[1, 10])(10**400) == ">=10"


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(
        st.text(max_size=12),
        st.sampled_from(["android", "ios", "x"]),
        st.integers(),
        st.booleans(),
        st.floats(allow_nan=False),
    )
)
def test_fused_generalise_and_replace_equal_the_transform(value):
    gen = build(
        Generalise, path="x", map={"android": "mobile", "ios": "mobile", "1": "one", "true": "yes"}, default="other"
    )
    rep = build(Replace, path="x", value="[removed]")
    assert same(fused(gen)(value), gen(value))
    assert fused(rep)(value) == rep(value) == "[removed]"


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.sampled_from(["Android 14", "Android", "iOS 17", "x", "1", "True"]),
                                 st.text(max_size=6), st.integers(), st.booleans()), max_size=8))
def test_fused_generalise_prefix_equals_the_transform_remembered_or_not(values):
    gen = build(Generalise, path="x", match="prefix", map={"Android": "A", "iOS": "I", "1": "one", "true": "t"})
    ref = build(Generalise, path="x", match="prefix", map={"Android": "A", "iOS": "I", "1": "one", "true": "t"})
    f, inline = fused(gen), fused_only(gen)
    for v in [*values, *values]:  # the second time remembered: inline
        assert same(f(v), ref(v)), v
        hit = inline(v)
        assert hit is None or same(hit, ref(v)), v
    assert inline(None) is inline(UNSET) is inline(1) is None  # only strings are remembered


ISO_Z = "%Y-%m-%dT%H:%M:%SZ"


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.integers(1_600_000_000, 1_900_000_000).map(lambda e: time.strftime(ISO_Z, time.gmtime(e))),
            st.sampled_from(["2026-01-15T07:10:60Z", "2026-01-15T07:10:5xZ", "2026-01-15T11:30:04+05:30", "x" * 20]),
            st.integers(1_600_000_000, 1_900_000_000),
        ),
        max_size=8,
    ),
    to=st.sampled_from(["minute", "hour", "day", "month"]),
)
def test_fused_bucket_time_equals_the_transform_remembered_or_not(values, to):
    e1, e2 = env(), env()
    fn, ref = build(BucketTime, e1, path="ts", to=to), build(BucketTime, e2, path="ts", to=to)
    f, inline = fused(fn), fused_only(fn)
    for v in [*values, *values]:  # the second time remembered: inline
        assert same(f(v), ref(v)) or f(v) is ref(v) is UNSET, v
        hit = inline(v)
        assert hit is None or same(hit, ref(v)), v
    assert e1.stats == e2.stats  # invalid times counted alike
    assert inline(None) is inline(UNSET) is inline(1_700_000_000) is None
    assert build(BucketTime, path="ts", seconds=30).inline is None  # buckets inside a minute: no memory


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.sampled_from(["at com.x.Lock.open(Lock.java:42)", "sync timeout", "mail a@example.com", "pwd=x1"]),
            st.text(max_size=12),
        ),
        max_size=8,
    )
)
def test_fused_scrub_equals_the_transform_remembered_or_not(values):
    fn, ref = build(Scrub, path="log"), build(Scrub, path="log")
    f, inline = fused(fn), fused_only(fn)
    for v in [*values, *values]:  # the second time a clean text is remembered: inline
        assert f(v) == ref(v), v
        hit = inline(v)
        assert hit is None or hit == ref(v) == v, v
    assert inline("mail a@example.com") is None  # a text with a hit is never remembered


def test_fused_cached_transforms_equal_the_transform_hit_or_miss():
    e = env()
    cases = [
        (
            build(Pseudonymise, e, path="d", keep_prefix=8, shape="imei"),
            ["490154203237518", 490154203237518, "a", "490154203237518"],
        ),
        (build(Encrypt, e, path="d"), ["UPI/1", 7, "UPI/1"]),
        (
            build(TruncateIp, e, path="ip"),
            ["203.0.113.77", "::ffff:203.0.113.7", "not-an-ip", "203.0.113.77", "not-an-ip"],
        ),
    ]
    for fn, values in cases:
        f, inline = fused(fn), fused_only(fn)
        for v in values:  # the first time a miss (the call), then a cache hit
            assert same(f(v), fn(v)) or f(v) is fn(v) is UNSET, v
        assert inline(values[0]) == fn(values[0])  # a hit, inline
        assert inline(None) is inline(UNSET) is None  # never a hit
    assert e.stats[("ip", "invalid_ip")] == 4  # counted on every miss, fused or not


def test_fused_pseudonym_cache_follows_the_epoch_after_refresh():
    e = env(NOW)
    fn = build(Pseudonymise, e, path="d", rotate="daily")
    f = fused(fn)
    day1 = expected_pseudonym("dev", rotate="daily", epoch="2023-11-14")
    assert f("dev") == day1 and f("dev") == day1
    e.epochs.advance(NOW + 2 * 3600)  # 00:13 next day
    fn.refresh()  # what the engine does when the generation changes
    assert f("dev") == expected_pseudonym("dev", rotate="daily", epoch="2023-11-15")


def reference_grid(grid_m: float):
    """The grid snap in plain integer arithmetic (the form it had before it was fused)."""
    n_lat = max(1, math.floor(180.0 / (grid_m / M_PER_DEG)))
    step_lat = 180.0 / n_lat
    digits = min(7, max(0, math.ceil(-math.log10(step_lat)) + 1))

    def snap(lat, lon):
        if lon >= 180.0:
            lon -= 360.0
        i = min(int((lat + 90.0) / step_lat), n_lat - 1)
        centre = -90.0 + (i + 0.5) * step_lat
        width = grid_m / (M_PER_DEG * max(math.cos(math.radians(centre)), 1e-12))
        n_lon = max(1, math.floor(360.0 / width))
        step_lon = 360.0 / n_lon
        j = int((lon + 180.0) / step_lon) % n_lon
        return round(centre, digits) + 0.0, round(-180.0 + (j + 0.5) * step_lon, digits) + 0.0

    return snap


def fused_location(fn):
    test, lines, names = fn.inline("_t_", "consented")
    body = "".join(f"        {line}\n" for line in lines)
    source = f"def f(la, lo, consented):\n    if {test}:\n{body}        return pt\n    return fn(la, lo, consented)\n"
    ns = {"fn": fn, **names}
    exec(source, ns)
    return ns["f"]


coordinates = st.tuples(
    st.one_of(
        st.floats(-90, 90),
        st.sampled_from([-90.0, 90.0, 0.0, -0.0, 89.99999999, -89.99999999]),
        st.floats(allow_nan=True),
    ),
    st.one_of(
        st.floats(-180, 180),
        st.sampled_from([-180.0, 180.0, 179.99999999, -179.99999999, 0.0, -0.0]),
        st.floats(allow_nan=True),
    ),
)


@settings(max_examples=500, deadline=None)
@given(
    point=coordinates,
    grid_m=st.sampled_from([1, 10, 1000, 1234.5, 20000, 111_320, 20_000_000]),
    consented=st.booleans(),
)
def test_fused_coarsen_equals_the_transform_and_the_integer_grid(point, grid_m, consented):
    lat, lon = point
    e1, e2 = env(), env()
    params = {"grid_m": grid_m, "consent": "precise", "consent_decimals": 4}
    fn, ref = coarsen(e1, **params), coarsen(e2, **params)
    out = fused_location(fn)(lat, lon, consented)
    assert out == ref(lat, lon, consented)
    assert out is None or all(map(same, out, ref(lat, lon, consented)))
    assert e1.stats == e2.stats
    if out is not None and not consented:
        assert out == reference_grid(grid_m)(lat, lon)
        assert all(map(same, out, reference_grid(grid_m)(lat, lon)))


def test_coarsen_with_zones_or_fixed_has_no_fused_form():
    assert coarsen(grid_m=1000, zones=[{"lat": 1, "lon": 1, "radius_m": 10}]).inline("_t_", "False") is None
    assert coarsen(grid_m=1000, mode="fixed", at=[1.0, 2.0]).inline("_t_", "False") is None
    assert coarsen(decimals=3).inline("_t_", "False") is None


ISO_EXAMPLES = ["2026-11-23", "2026-11-23T10:03", "2026-11-23 10:03:44", "2026-11-23T10:03:44Z",
                "2026-11-23T10:03:44.123456789+05:30", "2026-11-23T10:03:44-0800", "2026-11-23+01:00"]


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789-:T Z+.٣", max_size=36),
    st.sampled_from(ISO_EXAMPLES).flatmap(lambda s: st.integers(0, len(s) - 1).map(lambda i: s[:i] + "x" + s[i + 1 :])),
))
def test_iso_time_shapes_never_admit_more_than_the_regex(text):
    from gateway.ops.detect import ISO_TIME, iso_time

    if iso_time(text):
        assert ISO_TIME.fullmatch(text)


def test_iso_time_shapes_cover_the_timestamps_devices_send():
    from gateway.ops.detect import ISO_SHAPES, ISO_TIME, iso_time

    assert len(ISO_SHAPES) == 138  # every ASCII shape ISO_TIME accepts: 1 + 2 * 11 times of day, 6 zones each
    for text in ISO_EXAMPLES:
        assert ISO_TIME.fullmatch(text) and iso_time(text)
    assert not iso_time("2026-11-23T10:03:44Z\n") and not iso_time("٢٠٢٦-11-23")
