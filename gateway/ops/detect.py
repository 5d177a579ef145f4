"""Detectors for identifiers hidden in free text, shared by ``scrub`` and the leak guard.

Each family has its own compiled regex, run only when a byte-level gate says
the text could hold it (no ``@``: no e-mail or UPI VPA; fewer than 8 digits: no
card, IMEI, UTR or phone). Most kept strings ("locked", "card") pass every gate
in well under a microsecond, which is what lets the leak guard run on the hot
path. Every pattern may only start at a word boundary (a look-behind), so a long
crash log or base64 blob is scanned in linear time. Cheap checks (Luhn, digit
counts, ``ipaddress``) then decide what a candidate is.
"""

from __future__ import annotations

import ipaddress
import re

DETECTORS = ("secret", "email", "upi_vpa", "ip", "card", "imei", "utr", "phone")
TOKENS = {name: f"[{name.upper()}]" for name in DETECTORS}
ALL = frozenset(DETECTORS)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_SECRET = re.compile(
    r"""(?<![A-Za-z0-9_])(?:
        (?i:bearer|basic)\s+(?=[A-Za-z0-9._~+/=-]*?(?:[0-9+/=]|[a-z][A-Z]))(?P<bearer>[A-Za-z0-9._~+/=-]{8,})
      | (?i:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|upi[_-]?pin|pin|otp)
        ["']?\s*[=:]\s*["']?(?P<value>[^\s"',;&}]+))
  | (?<=://)(?P<userinfo>[^\s/:@]+:[^\s/@]+)@""",
    re.VERBOSE,
)
_SECRET_WORDS = re.compile(rb"bearer|basic|pass|pwd|secret|token|key|pin|otp")
_AT = re.compile(r"(?<![A-Za-z0-9._%+-])(?P<local>[A-Za-z0-9._%+-]++)@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)")
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.])")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\d{1,3}(?:\.\d{1,3}){3})?(?:%[\w.]+)?(?![\w:.])")
_DIGITS = re.compile(
    r"(?<![A-Za-z0-9+])(?<!\d[.,])(?>\+?(?:\(\d{1,5}\)[ -]?)?\d(?:\)?[ -]?\(?\d){5,}+\)?)(?![A-Za-z0-9])"
)
_DATE = re.compile(r"(?:19|20)\d\d-[01]\d-[0-3]\d|[0-3]\d-[01]\d-(?:19|20)\d\d")
_GROUP = re.compile(r"\+?\(?\d+\)?")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_DIGIT_BYTES = b"0123456789"
# A value that is exactly an ISO 8601 timestamp holds no identifier; timestamps
# are the commonest kept strings with many digits, so they skip the scans.
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?)?(?:Z|[+-]\d\d:?\d\d)?")
# The same test without the regex engine (about 1 us a call here): an ASCII string whose
# digits, all written as "0", give one of the finitely many shapes ISO_TIME accepts.
ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
ISO_SHAPES = frozenset(
    f"0000-00-00{time}{zone}".encode()
    for time in ["", *(f"{sep}00:00{sec}" for sep in "T " for sec in ["", ":00", *(":00." + "0" * k for k in range(1, 10))])]
    for zone in ("", "Z", "+00:00", "-00:00", "+0000", "-0000")
)
assert all(ISO_TIME.fullmatch(shape.decode()) for shape in ISO_SHAPES)


def iso_time(text: str) -> bool:
    """``ISO_TIME.fullmatch(text)`` for ASCII text, about 4x cheaper; False may still be a
    timestamp written with non-ASCII digits (callers then run the full scan)."""
    return text.isascii() and len(text) <= 35 and text.encode().translate(ZERO_DIGITS) in ISO_SHAPES


def luhn(digits: str) -> bool:
    """Luhn check (payment cards, IMEIs) over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        x = ord(ch) - 48
        if i & 1:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return total % 10 == 0


def classify_digits(run: str) -> str | None:
    """What a run of digits (with optional ``+``, spaces, dashes, parentheses) is."""
    if _DATE.match(run):  # "2026-11-23 10" in a log line is a timestamp, not a phone
        return None
    digits = "".join(ch for ch in run if ch.isdigit())
    return _kind(digits, len(digits) == len(run), run.startswith("+"))


def _kind(digits: str, contiguous: bool, plus: bool) -> str | None:
    n = len(digits)
    if 13 <= n <= 19 and luhn(digits):
        if n == 15 and contiguous and not digits.startswith(("34", "37")):
            return "imei"
        return "card"
    if n == 12 and contiguous:
        return "utr"
    if 10 <= n <= 15 or (plus and n >= 8):
        return "phone"
    return None


def classify_number(value: int) -> str | None:
    """Identifiers a JSON integer can carry: a 12-digit UTR, a 15-digit IMEI or
    a 16-19 digit card number (Luhn). 10, 13 and 14 digit numbers are left
    alone: they are epoch seconds and milliseconds far more often."""
    if -100_000_000_000 < value < 100_000_000_000:
        return None
    digits = str(abs(value))
    n = len(digits)
    if n == 12:
        return "utr"
    if (n == 15 or 16 <= n <= 19) and luhn(digits):
        return "imei" if n == 15 else "card"
    return None


_RANK = {"card": 0, "imei": 0, "utr": 1, "phone": 2}


def _digit_run(m: re.Match) -> list[tuple[int, int, str]]:
    """Identifiers in a run of digit groups. The run is greedy across spaces and
    dashes ("qty 2 4111 1111 1111 1111"), so when it is not one identifier as a
    whole, sub-runs of whole groups are tried: Luhn-checked numbers first, then
    UTRs, then phones, longer before shorter. A sub-run starts at a group of two
    or more digits (or a "+"), never at a date, and holds at most 19 digits, so
    the work is linear in the length of the run."""
    run = m.group()
    kind = classify_digits(run)
    if kind:
        return [(m.start(), m.end(), kind)]
    groups = [(g.start(), g.end(), "".join(ch for ch in g.group() if ch.isdigit())) for g in _GROUP.finditer(run)]
    in_date = bytearray(len(run))
    for d in _DATE.finditer(run):
        in_date[d.start() : d.end()] = b"\x01" * (d.end() - d.start())
    candidates = []
    for i, (start, _, first_digits) in enumerate(groups):
        if (len(first_digits) < 2 and run[start] != "+") or in_date[start]:
            continue
        digits, best = "", None
        for k in range(i, len(groups)):
            digits += groups[k][2]
            if len(digits) > 19:
                break
            if len(digits) >= 8:
                kind = _kind(digits, k == i and run[start].isdigit(), run[start] == "+")
                if kind and (best is None or (_RANK[kind], start - groups[k][1]) < best[:2]):
                    best = (_RANK[kind], start - groups[k][1], start, groups[k][1], kind)
        if best is not None:
            candidates.append(best)
    hits: list[tuple[int, int, str]] = []
    taken = bytearray(len(run))
    for _, _, start, end, kind in sorted(candidates):
        if not any(taken[start:end]):
            taken[start:end] = b"\x01" * (end - start)
            hits.append((m.start() + start, m.start() + end, kind))
    return sorted(hits)


def _at(m: re.Match) -> str | None:
    domain = m.group("domain")
    if "." in domain:
        tld = domain.rsplit(".", 1)[1]
        return "email" if len(tld) >= 2 and tld.isalpha() else None
    return "upi_vpa" if len(domain) >= 2 and domain.isalpha() else None


def _ipv6(m: re.Match) -> str | None:
    try:
        ipaddress.IPv6Address(m.group().split("%", 1)[0])
    except ValueError:
        return None
    return "ip"


def find(text: str, enabled: frozenset[str] = ALL) -> list[tuple[str, int, int]]:
    """``(detector, start, end)`` for every enabled identifier, in order, not overlapping."""
    if len(text) <= 35 and ISO_TIME.fullmatch(text):
        return []
    raw = text.encode("utf-8", "surrogatepass")
    digits = len(raw) - len(raw.translate(None, _DIGIT_BYTES))
    hits: list[tuple[int, int, str]] = []
    if "secret" in enabled and (b"://" in raw or _SECRET_WORDS.search(raw.lower())):
        for m in _SECRET.finditer(text):
            group = m.lastgroup if m.lastgroup == "userinfo" else "bearer" if m.group("bearer") is not None else "value"
            hits.append((m.start(group), m.end(group), "secret"))
    if b"@" in raw and not enabled.isdisjoint(("email", "upi_vpa")):
        for m in _AT.finditer(text):
            kind = _at(m)
            if kind:
                hits.append((m.start(), m.end(), kind))
    if "ip" in enabled:
        if digits >= 4 and b"." in raw:
            hits.extend((m.start(), m.end(), "ip") for m in _IPV4.finditer(text))
        if raw.count(b":") >= 2:
            hits.extend((m.start(), m.end(), "ip") for m in _IPV6.finditer(text) if _ipv6(m))
    if digits >= 8:
        # A UUID's groups are hex, and an all-digit one is not a UTR or phone.
        uuids = [m.span() for m in _UUID.finditer(text)] if b"-" in raw else []
        for m in _DIGITS.finditer(text):
            for hit in _digit_run(m):
                if not any(a <= hit[0] and hit[1] <= b for a, b in uuids):
                    hits.append(hit)
    if not hits:
        return []
    # Earliest first, longest first at the same start; drop what an earlier hit covers.
    hits.sort(key=lambda h: (h[0], -h[1]))
    out: list[tuple[str, int, int]] = []
    end = -1
    for start, stop, kind in hits:
        if start >= end and kind in enabled:
            out.append((kind, start, stop))
            end = stop
    return out


def first(text: str, enabled: frozenset[str] = ALL) -> str | None:
    """The detector name of the first identifier in ``text``, or None."""
    hits = find(text, enabled)
    return hits[0][0] if hits else None


def scrub(text: str, enabled: frozenset[str] = ALL) -> str:
    """Replace each identifier with its typed token (``[EMAIL]``, ``[CARD]`` ...)."""
    hits = find(text, enabled)
    if not hits:
        return text
    out: list[str] = []
    pos = 0
    for kind, start, end in hits:
        out.append(text[pos:start])
        out.append(TOKENS[kind])
        pos = end
    out.append(text[pos:])
    return "".join(out)
