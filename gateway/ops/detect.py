"""Detectors for identifiers hidden in free text, shared by ``scrub`` and the leak guard.

Text is first normalised (``normalise``): every Unicode decimal digit becomes its
ASCII digit (fullwidth, Devanagari, Arabic-Indic ... every script Python knows),
NFKC folds compatibility forms (fullwidth ``@`` and letters, circled digits), Unicode spaces become
spaces and dashes ``-``, zero-width and other format characters and combining marks
are removed, and ``%40``, ``&#64;`` and ``\\u0040`` escapes are decoded. A pure-ASCII
string without an escape, the common case, is used as it is. Hits are mapped back to
spans of the original text.

Each family then has its own compiled regex, run only when a byte-level gate says
the text could hold it (no ``@``: no e-mail or UPI VPA; fewer than 8 digits: no
card, IMEI, UTR or phone). Most kept strings ("locked", "card") pass every gate
in well under a microsecond, which is what lets the leak guard run on the hot
path. Patterns start at a boundary (a look-behind) and use possessive repeats, so
a long crash log or base64 blob is scanned in linear time; digit runs are split
into identifiers group by group only up to a budget of characters per text, beyond
which a single C-speed pattern marks every run of 10 or more digits (so 64 KiB of
``12 12 12 ...`` costs about a millisecond, not a Python step per group). Cheap
checks (Luhn, digit counts, ``ipaddress``) then decide what a candidate is.
"""

from __future__ import annotations

import ipaddress
import math
import re
import unicodedata
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate

DETECTORS = ("secret", "email", "upi_vpa", "ip", "card", "imei", "utr", "phone")
ALL = frozenset(DETECTORS)
# A pair of coordinates with PAIR_DECIMALS or more decimals is precise location. It is
# not a selectable detector: scrub and the guard always look for it (the consent gate
# must not be bypassed by writing a position as text).
COORDINATE = "coordinate"
PAIR_DECIMALS = 5
TOKENS = {name: f"[{name.upper()}]" for name in (*DETECTORS, COORDINATE)}

# -- normalisation ------------------------------------------------------------------------

_DROP = frozenset(("Cf", "Mn", "Mc", "Me"))  # zero-width, joiners, bidi marks, soft hyphen, combining marks
_SPACE = frozenset(("Zs", "Zl", "Zp"))
# Characters written between the digits of a phone number that are not dashes to Unicode: the
# katakana prolonged sound mark (Japanese numbers), middle dots and bullets, the minus sign.
_DASH_LIKE = frozenset("\u2212\u30fc\uff70\u00b7\u30fb\uff65\u2027\u2219\u22c5\u2e31")
_FULL_STOPS = frozenset("\u3002\uff61\ufe52")  # ideographic and small full stops: "203。0。113。77"
# CJK numerals as digits ("一三八〇〇一三八〇〇〇" is a phone number typed in words)
_CJK_DIGITS = {ch: str(i) for i, ch in enumerate("〇一二三四五六七八九")} | {"零": "0"}


def _fold(ch: str) -> str:
    digit = unicodedata.decimal(ch, None)
    if digit is None:  # a digit that is no decimal digit: circled, dingbat, "digit nine full stop", Ethiopic
        digit = unicodedata.digit(ch, None)
    if digit is not None:
        return chr(48 + digit)
    category = unicodedata.category(ch)
    if category in _DROP:
        return ""
    if category in _SPACE or ch.isspace():
        return " "
    if category == "Pd" or ch in _DASH_LIKE:
        return "-"
    if ch in _FULL_STOPS:
        return "."
    return _CJK_DIGITS.get(ch, ch)


def normal_char(ch: str) -> str:
    """What one character reads as to the detectors: Arabic-Indic three -> ``"3"``, fullwidth
    at sign -> ``"@"``, zero-width space -> ``""``, circled one -> ``"1"``, ``"九"`` -> ``"9"``,
    katakana prolonged sound mark -> ``"-"``."""
    if ch.isascii():
        return ch
    folded = _fold(ch)
    if folded != ch:
        return folded
    return "".join(map(_fold, unicodedata.normalize("NFKC", ch)))


class _Table(dict[int, str]):
    """``str.translate`` table from a code point to what ``value`` makes of its normal form,
    filled lazily and bounded, so no table of all of Unicode is built at import."""

    def __init__(self, value: Callable[[str], str]) -> None:
        super().__init__({cp: value(chr(cp)) for cp in range(128)})
        self.value = value

    def __missing__(self, cp: int) -> str:
        out = self.value(normal_char(chr(cp)))
        if len(self) < 65536:
            self[cp] = out
        return out


_SENTINEL = "\uffff"  # in the one-for-one table: a character that normalises to 0 or 2+ characters
_FULL = _Table(lambda n: n)
_ONE = _Table(lambda n: n if len(n) == 1 and n != _SENTINEL else _SENTINEL)
_LENGTH = _Table(lambda n: chr(len(n)))
_ESCAPE = r"%[0-9A-Fa-f]{2}(?:%[0-9A-Fa-f]{2})*+|&#(?:[0-9]{1,7}|[xX][0-9A-Fa-f]{1,6});|\\u[0-9A-Fa-f]{4}"
_SPECIAL = re.compile(_ESCAPE + "|" + _SENTINEL)
_ESCAPED = re.compile(_ESCAPE)


def _unescape(s: str) -> str:
    if s[0] == "%":
        return bytes.fromhex(s.replace("%", "")).decode("utf-8", "replace")
    if s[0] == "&":
        n = int(s[3:-1], 16) if s[2] in "xX" else int(s[2:-1])
        return chr(n) if n < 0x110000 else "\ufffd"
    return chr(int(s[2:], 16))


def _unescape_match(m: re.Match[str]) -> str:
    return _unescape(m.group())


# Escapes and characters that normalise to 0 or 2+ characters are mapped back one by one up
# to this many in a text; beyond, a hit replaces the whole text (a pathological input).
ESCAPE_BUDGET = 4096


class Spans:
    """Where each stretch of a normalised text came from (text with escapes): ``(norm_start,
    orig_start, orig_end)``, ``orig_end`` None for a stretch copied character for character."""

    def __init__(self) -> None:
        self.norm: list[int] = []
        self.segs: list[tuple[int, int | None]] = []

    def add(self, norm_start: int, orig_start: int, orig_end: int | None) -> None:
        self.norm.append(norm_start)
        self.segs.append((orig_start, orig_end))

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that normalised to ``norm[start:end]``."""
        i = bisect_right(self.norm, start) - 1
        o_start, o_end = self.segs[i]
        a = o_start + (start - self.norm[i]) if o_end is None else o_start
        j = bisect_right(self.norm, end - 1) - 1
        o_start, o_end = self.segs[j]
        b = o_start + (end - 1 - self.norm[j]) + 1 if o_end is None else o_end
        return a, b


class _Lengths:
    """Spans of a text normalised character by character: built only when there is a hit, from
    the normal form's length of each character (``str.translate`` and ``accumulate``, C speed)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts: list[int] | None = None

    def original(self, start: int, end: int) -> tuple[int, int]:
        if self.starts is None:
            self.starts = list(accumulate(self.text.translate(_LENGTH).encode("latin-1"), initial=0))
        return bisect_right(self.starts, start) - 1, bisect_right(self.starts, end - 1)


def normalise(text: str) -> tuple[str, Spans | _Lengths | None]:
    """The text the detectors read, and how to map its spans back (None: the same positions)."""
    if text.isascii():
        if ("%" not in text and "&#" not in text and "\\u" not in text) or not _ESCAPED.search(text):
            return text, None
        folded = text
    else:
        norm = text.translate(_FULL)
        if not _ESCAPED.search(norm):
            return norm, _Lengths(text)
        folded = text.translate(_ONE)  # one character for one (or the sentinel)
    spans = Spans()
    pieces: list[str] = []
    n = pos = 0
    for count, m in enumerate(_SPECIAL.finditer(folded)):
        if count == ESCAPE_BUDGET:  # so many: decode all at once, and a hit covers the whole text
            spans = Spans()
            spans.add(0, 0, len(text))
            return _ESCAPED.sub(_unescape_match, text).translate(_FULL), spans
        a, b = m.span()
        if a > pos:
            spans.add(n, pos, None)
            pieces.append(folded[pos:a])
            n += a - pos
        escape = m.group()
        rep = normal_char(text[a]) if escape == _SENTINEL else "".join(map(normal_char, _unescape(escape)))
        if rep:
            spans.add(n, a, b)
            pieces.append(rep)
            n += len(rep)
        pos = b
    if pos < len(folded):
        spans.add(n, pos, None)
        pieces.append(folded[pos:])
    if not spans.norm:
        return "", None
    return "".join(pieces), spans


# -- patterns -----------------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|0\d{1,2}|[1-9]?\d)"  # leading zeros too: "203.0.113.077"
# A keyword may carry a prefix (db_password, client-secret, x.api_key, refreshToken) but not
# be the tail of a word (keypin, spinner); "pass" only with a prefix (DB_PASS).
_KEYWORD = r"""(?:
    (?<![A-Za-z0-9])(?i:password|passwd|passphrase|passcode|pwd|secret|token|api[_-]?key|access[_-]?key
        |private[_-]?key|credentials?|upi[_-]?pin|m?pin|otp|cvv2?|cvc2?
        |session[_-]?(?:id|key|token)?|sessid|jsessionid|sid|cookie|creds|psk
        |(?:auth|signing|master|client|app|shared|device|admin)[_-]?key)
  | (?<=[_-])(?i:key)(?:(?<=(?i:hmac).key)|(?<=(?i:root).key)|(?<=(?i:wifi).key)|(?<=(?i:license).key)
        |(?<=(?i:encryption).key))
  | (?<=[_.-])(?i:pass)
  | (?<![A-Za-z0-9])(?i:pass)(?=\s*=)
  | (?<=[a-z0-9])(?:P(?:assword|asswd|assphrase|wd|in|ASSWORD|IN)|S(?:ecret|ECRET)|T(?:oken|OKEN)
        |A(?:pi_?[Kk]ey|ccess_?[Kk]ey|PI_?KEY)|O(?:tp|TP)|C(?:redentials?|REDENTIALS?)|PrivateKey))
  (?:[_.-]?(?i:key|code|value|hash))?"""
_SECRET = re.compile(
    rf"""(?=[A-DJKMOPSTUa-djkmopstu])  # the first letters of the keywords: other positions fail fast
    (?:(?<![A-Za-z0-9])(?i:proxy-)?(?i:authorization)(?:\\?["'])?\s*[=:]\s*
        (?:"(?P<adq>[^"\\\n]{{1,256}})"|'(?P<asq>[^'\\\n]{{1,256}})'|\\"(?P<aeq>[^"\\\n]{{1,256}})\\"
        |(?:\\?["'])?(?:(?i:bearer|basic|token|digest|negotiate|ntlm|apikey|hmac|jwt)\s+)?(?P<auth>[^\s"',;&}}\\]+))
  | (?<![A-Za-z0-9])(?i:bearer|basic|token)\s++(?=[A-Za-z0-9._~+/=-]*?(?:[0-9+/=]|[a-z][A-Z]))
        (?P<bearer>[A-Za-z0-9._~+/=-]{{8,}})
  | (?<![A-Za-z0-9])(?i:otp|m?pin|upi[ _-]?pin|cvv2?|cvc2?|passcode)(?:\s++(?i:is|no\.?))?\s*+[#:=-]?\s*+
        (?P<code>\d{{3,8}})(?![\d.])
  | {_KEYWORD}(?:\\?["'])?\s*[=:]\s*  # a quote after the keyword may be JSON-escaped: {{\"pwd\":\"x\"}}
        (?:"(?P<dq>[^"\\\n]{{1,256}})"|'(?P<sq>[^'\\\n]{{1,256}})'|\\"(?P<eq>[^"\\\n]{{1,256}})\\"
        |(?:\\?["'])?(?P<value>(?:[^\s"',;&}}\\]|\\(?!["']))+)))""",
    re.VERBOSE,
)
# Credentials recognisable by their form alone: a JWT, an AWS access key id, a PEM private key
# block (to its end, or to the end of a truncated text), tokens with a vendor prefix.
_CREDENTIAL = re.compile(
    r"""(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+
  | (?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])
  | -----BEGIN[A-Z ]{0,20}PRIVATE\ KEY(?:\ BLOCK)?-----[\s\S]*?(?:-----END[A-Z ]{0,20}PRIVATE\ KEY(?:\ BLOCK)?-----|\Z)
  | (?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{20,}+|github_pat_[A-Za-z0-9_]{20,}+|xox[abposr]-[A-Za-z0-9-]{10,}+
        |[sr]k_(?:live|test)_[A-Za-z0-9]{16,}+|AIza[A-Za-z0-9_-]{30,}+|glpat-[A-Za-z0-9_-]{20,}+)""",
    re.VERBOSE,
)
_CREDENTIAL_GATE = re.compile(  # the forms' literal starts, as a tree: a common letter tries few branches
    rb"eyJ|A(?:KIA|SIA|BIA|CCA|Iza)|PRIVATE KEY|g(?:h[pousr]_|ithub_pat_|lpat-)|xox[abposr]-|k_(?:live|test)_"
)
_USERINFO = re.compile(r"(?<=://)(?P<userinfo>[^\s/:@]+:[^\s/@]+)@")
_USERINFO_AT = re.compile(r"://(?P<userinfo>[^\s/:@]+:[^\s/@]+)@")  # the same, searched by its literal start
# Every _SECRET match starts with one of these words, in any case as ``(?i)`` reads it (dotless
# and dotted I are an "i", long s an "s", the Kelvin sign a "k": _CASE_FOLD), so _SECRET is tried
# only where one begins.
_SECRET_START_WORDS = (
    r"a(?:uth(?:orization|[_-]?key)|(?:pi|ccess|pp|dmin)[_-]?key)|b(?:earer|asic)|c(?:vv|vc|red(?:ential|s)|ookie"
    r"|lient[_-]?key)|device[_-]?key|jsessionid|key|m(?:pin|aster[_-]?key)|otp|p(?:roxy-authorization|ass|wd|in"
    r"|rivate[_-]?key|sk)|s(?:ecret|ession|essid|id|igning[_-]?key|hared[_-]?key)|token|upi[ _-]?pin"
)
_SECRET_START = re.compile(_SECRET_START_WORDS.encode())
_SECRET_START_STR = re.compile(_SECRET_START_WORDS)
_CASE_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
_AT = re.compile(
    r"""(?:(?<![\w.%+-])(?P<local>[\w.%+-]++)|"[^"\\\n]{1,64}")@(?P<domain>[\w-]++(?:\.[\w-]++)*+)"""
)  # a local part may be quoted: "asha rao"@example.com
# An e-mail address with the at sign (and dots) spelt out: "asha [at] example [dot] com", "asha(at)example.com".
_AT_SPELT = re.compile(
    r"(?<![\w.%+-])[\w.%+-]++\s?[\[({](?i:at)[\])}]\s?(?P<domain>[\w-]++(?:(?:\.|\s?[\[({](?i:dot)[\])}]\s?)[\w-]++)*+)"
)
_AT_SPELT_GATE = re.compile(rb"[\[({][aA][tT][\])}]")
_DOT_SPELT = re.compile(r"\s?[\[({](?i:dot)[\])}]\s?")


# An IPv4 address may be followed by a full stop, a letter or other glue ("203.0.113.77.",
# "198.51.100.23.jpg", "203.0.113.77abc"), not by another number ("1.2.3.4.5"). It may be glued
# to a word ("ip203.0.113.77", "addr", "host_", "src") unless that word marks a version
# ("v1.2.3.4", "ver", "rev", "build", "fw", "version", "release", "firmware").
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)", re.ASCII)  # starts with a digit: fast
_VERSION_WORD = re.compile(r"(?i:(?<![A-Za-z])[vrb]|ver|rev|fw|sw|build|version|release|firmware)[_-]?\Z")
_GLUE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")


def _ipv4(text: str, m: re.Match[str]) -> bool:
    """An IPv4 match glued to a word is an address unless the word marks a version."""
    start = m.start()
    return not start or text[start - 1] not in _GLUE or not _VERSION_WORD.search(text, max(0, start - 9), start)


# An IPv4 address written with dashes, as in host names that embed it: after a word and a dash
# ("ip-10-0-0-5", "ec2-203-0-113-77.compute-1.amazonaws.com") or before a domain
# ("203-0-113-77.static.example.net").
_IPV4_DASHED = re.compile(
    rf"(?:(?<=[A-Za-z]-)|(?<=[A-Za-z]\d-)){_OCTET}(?:-{_OCTET}){{3}}(?!\w|-\d|\.\d)|(?<![\w.-]){_OCTET}(?:-{_OCTET}){{3}}(?=\.[A-Za-z])",
    re.ASCII,
)
# Every _IPV4 match holds four runs of 1-3 ASCII digits joined by dots: a cheap gate (C speed)
# before _IPV4.
_IPV4_GATE = re.compile(rb"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")
_IPV4_DASHED_GATE = re.compile(rb"[0-9]-[0-9]{1,3}-[0-9]{1,3}-[0-9]")  # the same for _IPV4_DASHED
_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\d{1,3}(?:\.\d{1,3}){3})?(?:%[\w.]+)?"
    r"(?![0-9A-Fa-f:]|\.\d)",
    re.ASCII,
)
# A run of digit groups joined by single separators: spaces, tabs, line breaks and dashes (strong), or
# ".", "/" and "_" (weak, see _digit_run). Letters may touch it ("card4111...", "tel98765...").
# "4111  1111", "4111 - 1111", "98765\r\n43210": up to three spaces, line breaks and dashes
_SEP = r"(?:[ \t\r\n\v\f-]{1,3}+|[./_])"
# The pattern starts with a digit class so that the regex engine skips other characters at
# C speed; a "+" or "(" just before the first digit is added by _digit_runs. A run holds 10
# or more digits, or 8 after a "+": fewer is no identifier.
_DIGITS = re.compile(
    rf"\d(?<![0-9].)(?<!\d[.,].)"
    rf"(?:(?<=\+.)(?=(?:\)?{_SEP}?\(?\d){{7}})|(?<=\+\(.)(?=(?:\)?{_SEP}?\(?\d){{7}})|(?=(?:\)?{_SEP}?\(?\d){{9}}))"
    rf"(?>\d*+(?:\)?{_SEP}?\(?\d++)*+\)?)",
    re.ASCII,
)
# Every _DIGITS match is a stretch of 8 or more digits and separators, from a digit to a digit:
# a cheap gate (C speed) before _DIGITS tries its look-arounds at every digit.
_DIGITS_GATE = re.compile(rb"[0-9][0-9 \t\r\n\v\f./_()-]{6,}[0-9]")
_COARSE = re.compile(
    rf"(?<![0-9+])(?<!\d[.,])(?=\+?(?:\d[()]?{_SEP}?[()]?){{9}}\d)\+?\d++(?:[()]?{_SEP}?[()]?\d++)*+", re.ASCII
)
_DATE = re.compile(r"(?:19|20)\d\d([-/._])[01]\d\1[0-3]\d|[0-3]\d([-/._])[0-3]\d\2(?:19|20)\d\d", re.ASCII)
_COMPACT_DATE = re.compile(r"(?:19|20)\d\d[01]\d[0-3]\d", re.ASCII)
_GROUP = re.compile(r"\+?\(?\d+\)?", re.ASCII)
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# A hash or key in hex (a word of 32+ hex digits with a letter) is not a row of identifiers.
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{0,161}")
_ALNUM = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_NUM = r"(?:(?<![A-Za-z])[NSEWnsew]\s?)?[-+]?\d{1,3}\.(\d++)(?:\s?°)?(?:\s?[NSEWnsew](?![A-Za-z]))?"
# Between the numbers of a pair: a separator or spaces, optionally closing and opening quotes and
# a coordinate key ("12.971598&lon=77.594562", '12.971598,"lng":77.594562', "x=.. y=..").
_BETWEEN = (
    r"""["']?(?:\s*+[,;/|&]\s*+|\s++)"""
    r"""(?:["']?(?i:lat|latitude|lon|lng|long|longitude|x|y)["']?\s*+[:=]?\s*+)?["']?"""
)
_PAIR = re.compile(rf"(?<![\d.]){_NUM}{_BETWEEN}{_NUM}(?!\d|\.\d)", re.ASCII)
# Degrees, minutes and seconds (12°58'17.7"N 77°35'40.4"E) or degrees and decimal minutes
# (12°58.2959'N): precise with a decimal of a second (3 m) or three decimals of a minute (2 m).
_DMS_ONE = (
    r"\d{1,3}\s?°\s?\d{1,2}(?:\.(\d++))?\s?['\u2032](?:\s?\d{1,2}(?:\.(\d++))?\s?(?:[\"\u2033]|''|\u2032\u2032))?"
    r"\s?[NSEWnsew]"
)
_DMS = re.compile(rf"(?<![\d.]){_DMS_ONE}[\s,;/]*+{_DMS_ONE}")
# A pair written with decimal commas (European locales): "12,971598 77,594562", "12,971598;77,594562".
# A UPI payment link's query (upi://pay?pa=asha@okaxis&pn=Asha%20Rao&tn=...): with the payee
# address come the payee's name and a note, so the whole query is the identifier.
_UPI_GATE = re.compile(rb"[?&][pP][aA]=")
_UPI_QUERY = re.compile(  # a space (a decoded %20) continues it when "=", "&", "#" or the end follows that word
    r"""(?<=\?)(?:[^\s"'<>#?]*&)?(?i:pa)=(?:[^\s"'<>#]++|\ (?=[^\s"'<>#=&]*+(?:[=&#]|\Z)))++"""
)
_PAIR_COMMA = re.compile(
    r"(?<![\d.,])[-+]?(\d{1,3}),(\d{5,})(?:\s?°)?(?:\s*+;\s*+|\s++)[-+]?(\d{1,3}),(\d++)(?![\d,])", re.ASCII
)
_FIVE_COMMA_DECIMALS = re.compile(rb",[0-9]{5}")
_FIVE_DECIMALS = re.compile(rb"\.[0-9]{5}")  # a cheap gate (a literal first) before _PAIR
_PAIR_NUMBER = re.compile(r"[-+]?\d{1,3}\.\d+", re.ASCII)
_DIGIT_BYTES = b"0123456789"
_NOT_HEX = str.maketrans(dict.fromkeys("0123456789ABCDEFabcdef"))
_ONLY_DIGITS = str.maketrans(dict.fromkeys(" \t\r\n\v\f-()+./_"))  # a digit run's digits
# A value that is exactly an ISO 8601 timestamp holds no identifier; timestamps
# are the commonest kept strings with many digits, so they skip the scans.
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?)?(?:Z|[+-]\d\d:?\d\d)?", re.ASCII)
# The same test without the regex engine (about 1 us a call here): an ASCII string whose
# digits, all written as "0", give one of the finitely many shapes ISO_TIME accepts.
ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_SECONDS = ["", ":00", *(":00." + "0" * k for k in range(1, 10))]
ISO_SHAPES = frozenset(
    f"0000-00-00{time}{zone}".encode()
    for time in ["", *(f"{sep}00:00{sec}" for sep in "T " for sec in _SECONDS)]
    for zone in ("", "Z", "+00:00", "-00:00", "+0000", "-0000")
)
assert all(ISO_TIME.fullmatch(shape.decode()) for shape in ISO_SHAPES)
# Splitting digit runs group by group costs Python steps; beyond this many characters of
# runs in one text, _COARSE marks the rest (every run of 10+ digits is a phone).
RUN_BUDGET = 1024


def iso_time(text: str) -> bool:
    """``ISO_TIME.fullmatch(text)`` for ASCII text, about 4x cheaper; False may still be a
    timestamp written with non-ASCII digits (callers then run the full scan)."""
    return text.isascii() and len(text) <= 35 and text.encode().translate(ZERO_DIGITS) in ISO_SHAPES


_DOUBLE = str.maketrans("0123456789", "0246813579")  # a digit doubled, its digits summed


def luhn(digits: str) -> bool:
    """Luhn check (payment cards, IMEIs) over a string of digits (any script)."""
    if not digits.isascii():
        digits = digits.translate(_ONE)
    if not digits.isdigit():
        return False
    odd, even = digits[-1::-2], digits[-2::-2].translate(_DOUBLE)
    return (sum(odd.encode()) + sum(even.encode()) - 48 * len(digits)) % 10 == 0


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


NUMBER_LIMIT = 100_000_000_000  # numbers below this (in magnitude) cannot be a UTR, IMEI or card
_EXACT = 2**53  # beyond this a double does not hold every integer


def classify_number(value: int | float) -> str | None:
    """Identifiers a JSON number can carry: a 12-digit UTR, a 15-digit IMEI or a 16-19
    digit card number (Luhn). 10, 13 and 14 digit numbers are left alone: they are epoch
    seconds and milliseconds far more often.

    A float is read as its integer part (``4111111111111111.0``, ``4.111111111111111e15``:
    cJSON prints numbers so). A float of 15 integer digits is an IMEI even without a valid
    check digit (a device id sent as a double), and one of 16-19 digits beyond 2**53, whose
    last digits a double cannot hold, is a card."""
    if -NUMBER_LIMIT < value < NUMBER_LIMIT:
        return None
    if value.__class__ is not int:
        if not math.isfinite(value):
            return None
        if _EXACT <= abs(value) < 10**19:
            return "card"
        value = int(value)
        if 10**14 <= abs(value) < 10**15:
            return "imei"
    digits = str(abs(value))
    n = len(digits)
    if n == 12:
        return "utr"
    if (n == 15 or 16 <= n <= 19) and luhn(digits):
        return "imei" if n == 15 else "card"
    return None


def precise_pair(a: float, b: float) -> bool:
    """Two numbers that read as a latitude and longitude, one with PAIR_DECIMALS+ decimals."""
    return _coordinates(a, b) and max(_float_decimals(a), _float_decimals(b)) >= PAIR_DECIMALS


_NUMBER_TEXT = re.compile(r"\s*+[-+]?\d{1,3}(?:\.(\d*?)0*+)?\s*+", re.ASCII)


def coordinate_value(v: object) -> tuple[float, int] | None:
    """A JSON number or a string holding one decimal number of up to 3 integer digits (in any
    script: ``"১২.৯৭১৫৯৮"``), as ``(value, decimals)``; None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, float):
        return v, _float_decimals(v)
    if isinstance(v, int):
        return float(v), 0
    if isinstance(v, str) and len(v) <= 48:
        text = v if v.isascii() else normalise(v)[0]
        m = _NUMBER_TEXT.fullmatch(text)
        if m is not None:
            return float(text), len(m.group(1) or "")
    return None


def position(a: object, b: object) -> bool:
    """Two values (numbers or numeric strings) that read as a latitude and longitude, one
    with PAIR_DECIMALS or more decimals: ``[12.971598, 77.594562]``, ``["12.971598", "77.594562"]``."""
    x, y = coordinate_value(a), coordinate_value(b)
    return x is not None and y is not None and max(x[1], y[1]) >= PAIR_DECIMALS and _coordinates(x[0], y[0])


_XY = (("x", "y"), ("X", "Y"), ("la", "lo"), ("lt", "ln"))


def keyed_position(d: dict[str, object]) -> bool:
    """An object holding a precise position under ``x``/``y`` (or ``la``/``lo``, ``lt``/``ln``)
    keys; ``lat``/``lon``-named keys are checked one by one (``coordinate_value``)."""
    return any(a in d and b in d and position(d[a], d[b]) for a, b in _XY)


def _coordinates(a: float, b: float) -> bool:
    return abs(a) <= 180 and abs(b) <= 180 and min(abs(a), abs(b)) <= 90


def _float_decimals(x: float) -> int:
    text = repr(float(x))
    mantissa, _, exponent = text.partition("e")
    decimals = len(mantissa.partition(".")[2].rstrip("0"))
    return max(0, decimals - int(exponent)) if exponent else decimals


_RANK = {"card": 0, "imei": 0, "utr": 1, "phone": 2}


def _digit_runs(text: str, m: re.Match[str]) -> list[tuple[int, int, str]]:
    """_digit_run over the match, with a "+", "(" or "+(" written just before it."""
    start = m.start()
    if start and text[start - 1] == "(":
        start -= 1
    if start and text[start - 1] == "+" and (start < 2 or text[start - 2] not in "0123456789+"):
        start -= 1
    return _digit_run(text[start : m.end()], start)


def _digit_run(run: str, offset: int) -> list[tuple[int, int, str]]:
    """Identifiers in a run of digit groups: windows of whole groups, Luhn-checked numbers
    first, then UTRs, then phones, longer before shorter. A window starts at a group of two
    or more digits (or a "+", or the whole run), never at a date or after a decimal point,
    and holds at most 19 digits, so the work is linear in the length of the run. A window
    joined by a weak separator (".", "/", "_") uses that one separator throughout and has
    3+ groups of 2+ digits ("4111.1111.1111.1111", "+91.98765.43210"; not "12.50 13.75",
    "10.0.19045.3693", "3.14159265358979" or an IPv4 address)."""
    digits = run.translate(_ONLY_DIGITS)
    if len(digits) < 10 and "+" not in run:
        return []  # fewer than 10 digits and no "+": no identifier ("0x80070005")
    if "." not in run and "/" not in run and "_" not in run and not _DATE.match(run):
        head = len(run) - len(run.lstrip("0123456789"))
        if not (head == 8 and _COMPACT_DATE.match(run)):  # the whole run as one identifier
            kind = _kind(digits, len(digits) == len(run.strip("()")), run[0] == "+")
            if kind:
                return [(offset, offset + len(run), kind)]
    groups = []
    for g in _GROUP.finditer(run):
        text = g.group()
        digits = text.strip("+()")
        groups.append((g.start(), g.end(), digits, run[g.start() - 1] if g.start() else "", text))
    in_date = bytearray(len(run))
    for d in _DATE.finditer(run):
        in_date[d.start() : d.end()] = b"\x01" * (d.end() - d.start())
    last = len(groups) - 1
    candidates = []
    for i, (start, _, first, before, text) in enumerate(groups):
        plus = text[0] == "+"
        short = len(first) < 2 and not plus  # starts only the whole run
        if (short and i) or in_date[start] or before == "." or (len(first) == 8 and _COMPACT_DATE.fullmatch(first)):
            continue
        digits, best, weak, strong = "", None, "", False
        for k in range(i, len(groups)):
            _, g_end, g_digits, g_before, _ = groups[k]
            digits += g_digits
            if len(digits) > 19:
                break
            if k > i:
                if g_before in "./_":
                    if strong or (weak and g_before != weak):
                        break  # a weak window uses one separator throughout
                    weak = g_before
                elif weak:
                    break
                else:
                    strong = True
            if len(digits) < 8 or (short and k != last) or (weak and not _weak_ok(run, groups, i, k, plus)):
                continue
            kind = _kind(digits, k == i and not plus, plus)
            if kind and (best is None or (_RANK[kind], start - g_end) < best[:2]):
                best = (_RANK[kind], start - g_end, start, g_end, kind)
        if best is not None:
            candidates.append(best)
    hits: list[tuple[int, int, str]] = []
    taken = bytearray(len(run))
    for _, _, start, end, kind in sorted(candidates):
        if not any(taken[start:end]):
            taken[start:end] = b"\x01" * (end - start)
            hits.append((offset + start, offset + end, kind))
    return sorted(hits)


def _weak_ok(run: str, groups: list[tuple[int, int, str, str, str]], i: int, k: int, plus: bool) -> bool:
    if k - i < 2:
        return False
    sizes = [len(groups[j][2]) for j in range(i, k + 1)]
    if min(sizes[1:]) < 2 or (sizes[0] < 2 and not plus):
        return False
    return not _IPV4.fullmatch(run[groups[i][0] : groups[k][1]].strip("()"))  # the ip detector's


def _in_hash(text: str, start: int, end: int) -> bool:
    """``text[start:end]`` lies inside a word of 32 to 160 hex digits with a letter (a hash, a key)."""
    glued_left = start > 0 and text[start - 1] in _ALNUM
    if not glued_left and (end == len(text) or text[end] not in _ALNUM):
        return False  # a word of its own: all digits, so no hash
    right = _HEX_RUN.match(text, end).end()  # type: ignore[union-attr]  # matches the empty string
    if right < len(text) and text[right] in _ALNUM:
        return False  # part of a longer word, not (only) hex
    left = start - len(_HEX_RUN.match(text[max(0, start - 160) : start][::-1]).group())  # type: ignore[union-attr]
    if left and text[left - 1] in _ALNUM:
        return False
    word = text[left:right]
    return 32 <= len(word) <= 160 and not word.isdigit() and text[start:end].translate(_NOT_HEX) == ""


def _at(m: re.Match[str]) -> str | None:
    return _at_kind(m.group("domain"))


def _at_kind(domain: str) -> str | None:
    if "." in domain:
        tld = domain.rsplit(".", 1)[1]
        return "email" if (len(tld) >= 2 and tld.isalpha()) or tld.lower().startswith("xn--") else None
    return "upi_vpa" if len(domain) >= 2 and domain.isalpha() else None


def _ipv6(m: re.Match[str]) -> str | None:
    try:
        ipaddress.IPv6Address(m.group().split("%", 1)[0])
    except ValueError:
        return None
    return "ip"


def _comma_pair(m: re.Match[str]) -> bool:
    a, b = float(f"{m.group(1)}.{m.group(2)}"), float(f"{m.group(3)}.{m.group(4)}")
    return _coordinates(a, b)


def _dms(m: re.Match[str]) -> bool:
    minutes, seconds = [m.group(i) or "" for i in (1, 3)], [m.group(i) or "" for i in (2, 4)]
    return max(map(len, minutes)) >= 3 or max(map(len, seconds)) >= 1


def _pair(m: re.Match[str]) -> bool:
    a, b = _PAIR_NUMBER.findall(m.group())[:2]
    return max(len(m.group(1)), len(m.group(2))) >= PAIR_DECIMALS and _coordinates(float(a), float(b))


def find(text: str, enabled: frozenset[str] = ALL) -> list[tuple[str, int, int]]:
    """``(detector, start, end)`` for every enabled identifier (and every precise coordinate
    pair), in order, not overlapping, as spans of ``text``."""
    return _map_back(text, enabled, gated=True)


def find_ungated(text: str, enabled: frozenset[str] = ALL) -> list[tuple[str, int, int]]:
    """``find`` with every pattern run over the whole text, no gate skipping any: slow, the
    reference the tests hold ``find`` to (a gate may only skip work, never a hit)."""
    return _map_back(text, enabled, gated=False)


def _map_back(text: str, enabled: frozenset[str], gated: bool) -> list[tuple[str, int, int]]:
    if text.isascii() and "%" not in text and "&#" not in text and "\\u" not in text:
        return _find(text, enabled, gated)  # the common case, read as it is
    norm, spans = normalise(text)
    hits = _find(norm, enabled, gated)
    if spans is None or not hits:
        return hits
    out: list[tuple[str, int, int]] = []
    for kind, start, end in hits:
        a, b = spans.original(start, end)
        if out and a < out[-1][2]:  # two hits inside one decoded escape
            out[-1] = (out[-1][0], out[-1][1], max(b, out[-1][2]))
        else:
            out.append((kind, a, b))
    return out


def _secrets(text: str, raw: bytes) -> list[re.Match[str]]:
    """``list(_SECRET.finditer(text))``, trying _SECRET only where a keyword it starts with
    begins (one pass of _SECRET_START), not at every letter that may start one."""
    if text.isascii():
        low: str | bytes = raw.lower()
        start: re.Pattern[str] | re.Pattern[bytes] = _SECRET_START
    else:
        low, start = text.translate(_CASE_FOLD).lower(), _SECRET_START_STR
        if len(low) != len(text):  # some character lower-cases to two: positions would shift
            return list(_SECRET.finditer(text))
    out = []
    c = start.search(low)  # type: ignore[arg-type]  # low and start are both str or both bytes
    while c is not None:
        p = c.start()
        m = _SECRET.match(text, p)
        if m is None:
            c = start.search(low, p + 1)  # type: ignore[arg-type]
        else:
            out.append(m)
            c = start.search(low, m.end())  # type: ignore[arg-type]  # finditer resumes at the match's end
    return out


def _find(text: str, enabled: frozenset[str], gated: bool = True) -> list[tuple[str, int, int]]:
    # Each ``gated and ...`` test is a cheap necessary condition for its pattern to match
    # (``find_ungated`` runs every pattern; tests/test_detect_gates.py holds the two equal).
    if len(text) <= 35 and ISO_TIME.fullmatch(text):
        return []
    raw = text.encode("utf-8", "surrogatepass")
    digits = len(raw) - len(raw.translate(None, _DIGIT_BYTES))
    hits: list[tuple[int, int, str]] = []
    if "secret" in enabled:
        for m in _secrets(text, raw) if gated else _SECRET.finditer(text):
            group = m.lastgroup or 0
            hits.append((m.start(group), m.end(group), "secret"))
        if not gated:
            hits.extend((m.start(1), m.end(1), "secret") for m in _USERINFO.finditer(text))
        elif "@" in text and "://" in text:
            hits.extend((m.start(1), m.end(1), "secret") for m in _USERINFO_AT.finditer(text))
        if not gated or (len(raw) >= 15 and _CREDENTIAL_GATE.search(raw)):  # the shortest, an AWS key id, has 20
            hits.extend((m.start(), m.end(), "secret") for m in _CREDENTIAL.finditer(text))
    spelt = "]" in text or ")" in text or "}" in text
    if "email" in enabled and (not gated or (spelt and _AT_SPELT_GATE.search(raw))):
        # only as an e-mail: "look [at] this" is no VPA
        for m in _AT_SPELT.finditer(text):
            if _at_kind(_DOT_SPELT.sub(".", m.group("domain"))) == "email":
                hits.append((m.start(), m.end(), "email"))
    if (not gated or "@" in text) and not enabled.isdisjoint(("email", "upi_vpa")):
        for m in _AT.finditer(text):
            kind = _at(m)
            if kind:
                hits.append((m.start(), m.end(), kind))
    if "upi_vpa" in enabled and (not gated or ("?" in text and "=" in text and _UPI_GATE.search(raw))):
        hits.extend((m.start(), m.end(), "upi_vpa") for m in _UPI_QUERY.finditer(text))
    if "ip" in enabled:
        if not gated or (digits >= 4 and text.count(".") >= 3 and _IPV4_GATE.search(raw)):
            hits.extend((m.start(), m.end(), "ip") for m in _IPV4.finditer(text) if _ipv4(text, m))
        if not gated or (digits >= 4 and text.count("-") >= 3 and _IPV4_DASHED_GATE.search(raw)):
            hits.extend((m.start(), m.end(), "ip") for m in _IPV4_DASHED.finditer(text))
        if not gated or text.count(":") >= 2:
            hits.extend((m.start(), m.end(), "ip") for m in _IPV6.finditer(text) if _ipv6(m))
    if not gated or digits >= 8:  # a pair holds 1.12345 and 1.1 at least
        if not gated or (text.count(".") >= 2 and _FIVE_DECIMALS.search(raw)):
            hits.extend((m.start(), m.end(), COORDINATE) for m in _PAIR.finditer(text) if _pair(m))
        if not gated or _FIVE_COMMA_DECIMALS.search(raw):
            hits.extend((m.start(), m.end(), COORDINATE) for m in _PAIR_COMMA.finditer(text) if _comma_pair(m))
    if not gated or (digits >= 6 and "°" in text):  # 1°2'3.4"N 5°6'E
        hits.extend((m.start(), m.end(), COORDINATE) for m in _DMS.finditer(text) if _dms(m))
    if not gated or (digits >= 8 and _DIGITS_GATE.search(raw)):
        found: list[tuple[int, int, str]] = []
        budget = RUN_BUDGET
        for m in _DIGITS.finditer(text):
            budget -= m.end() - m.start()
            if budget < 0:  # the rest in one pass at C speed
                kind = next((k for k in ("phone", "card", "imei", "utr") if k in enabled), "phone")
                found.extend((c.start(), c.end(), kind) for c in _COARSE.finditer(text, m.start()))
                break
            found.extend(_digit_runs(text, m))
        # (Tests on the str: ``"-" in text`` is ten times cheaper than ``b"-" in raw``.)
        # A UUID's groups are hex, and an all-digit one is not a UTR or phone; nor is a hash.
        ignore = [m.span() for m in _UUID.finditer(text)] if found and (not gated or "-" in text) else []
        for hit in found:
            if not any(a <= hit[0] and hit[1] <= b for a, b in ignore) and not _in_hash(text, hit[0], hit[1]):
                hits.append(hit)
    if not hits:
        return []
    # Earliest first, longest first at the same start; drop what an earlier hit covers.
    if len(hits) > 1:
        hits.sort(key=lambda h: (h[0], -h[1]))
    out: list[tuple[str, int, int]] = []
    end = -1
    for start, stop, kind in hits:
        if start >= end and (kind in enabled or kind == COORDINATE):
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
