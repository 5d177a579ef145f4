"""Simulated Smartjac installations: D sites of Smartjac software with their users and orders.

Ordinary traffic is mostly usage and sessions, with orders and support requests. About one
message in 40 is an awkward case (``AWKWARD``: the case and the outcome the pack gives it,
"" = forwarded minimised, else the reject reason).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import msgspec

from devices.common import Clock, Sample, Schedule, card_number, encode, imei, ipv4, ipv6, mobile, person, pick
from devices.smartjac.messages import Geo, Order, Payment, Session, Support, Usage, User
from devices.smartjac.topics import topic

SYSTEM = "smartjac"

AWKWARD: dict[str, str] = {
    "card_in_note": "",  # a user pasted the card number and e-mail into a support note
    "card_fields": "",  # a checkout form posted the card fields along with the order
    "cvv": "payment_credential",  # ... and the CVV
    "ipv6_session": "",  # a session from an IPv6 network
    "ipv4_mapped": "",  # an IPv4-mapped IPv6 address
    "numeric_order_id": "",  # the order id as a JSON number
    "unknown_values": "",  # a language, OS, browser, provider and status the pack does not know
    "vendor_fields": "",  # a phone, an IMEI, an ad id, a birth date, user content, installed software
    "nulls": "",  # name, e-mail and ip sent as null
    "invalid_ip": "",  # ip "unknown"
    "unknown_kind": "",  # a record kind the pack does not know
    "opt_in_text": "wrong_type",  # marketing opt-in as "yes"
    "email_in_products": "leak",  # the user's e-mail typed into the product list
}

_KINDS = {"usage": 50, "session": 30, "order": 12, "support": 8}
_PRODUCTS = ("SmartSIM Manager", "Cloud Console", "IoT Connectivity", "eSIM Hub", "Device Insights")
_PLACES = (
    ("FI", "Uusimaa", "fi-FI"),
    ("FI", "Pirkanmaa", "fi-FI"),
    ("SE", "Stockholm", "sv-SE"),
    ("IN", "Karnataka", "en-IN"),
    ("IN", "Maharashtra", "en-IN"),
    ("DE", "Bayern", "de-DE"),
)
_ENVIRONMENTS = (
    ("Windows 11 Pro 23H2", "Chrome 126.0.6478.127", "laptop"),
    ("Windows 10 Enterprise 22H2", "Edge 126.0.2592.87", "desktop"),
    ("Mac OS X 10.15.7", "Safari 17.5", "laptop"),
    ("Ubuntu 22.04", "Firefox 128.0", "desktop"),
    ("Android 14", "Chrome 126.0.6478.122", "phone-android"),
    ("iPadOS 17.5", "Safari 17.5", "tablet"),
)
_NETWORKS = {
    "FI": ((88, 112), (91, 152)),
    "SE": ((83, 233), (90, 224)),
    "DE": ((91, 64), (84, 128)),
    "IN": ((49, 36), (106, 198)),
}  # Elisa, Telia, DTAG, Jio, Airtel
_STATUSES = {"paid": 70, "pending": 15, "failed": 8, "refunded": 5, "cancelled": 2}


class _Installation:
    def __init__(self, rng: random.Random, n: int) -> None:
        self.id = f"INST-{(n * 7919 + 42) % 10000:04d}"
        self.country, self.region, self.lang = rng.choice(_PLACES)
        self.os, self.browser, self.hw = rng.choice(_ENVIRONMENTS)
        self.products = sorted(rng.sample(_PRODUCTS, rng.randint(1, 3)))
        first, last = person(rng)
        self.name = f"{first.title()} {last.title()}"
        self.email = f"{first}.{last}@{rng.choice(('example.com', 'corp.example', 'gmail.com'))}"
        self.ip = ipv4(rng, _NETWORKS[self.country])
        self.opt_in = rng.random() < 0.3


class _Sites:
    def __init__(self, devices: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.clock = Clock()
        self.sites = [_Installation(self.rng, n) for n in range(devices)]
        self.schedule = Schedule(self.rng, list(AWKWARD))
        self.tick = 120.0 / max(devices, 1)
        self.orders = 100_000

    def _order_id(self) -> str:
        self.orders += self.rng.randint(1, 9)
        return f"SJ-{self.orders}"

    def message(self, s: _Installation, kind: str) -> msgspec.Struct:
        rng = self.rng
        if kind == "session":
            return Session(
                installation_id=s.id,
                user=User(name=s.name, email=s.email),
                marketing_opt_in=s.opt_in,
                ip=s.ip,
                geo=Geo(country=s.country, region=s.region),
                lang=s.lang,
                products=s.products,
                os=s.os,
                browser=s.browser,
                hw_type=s.hw,
                user_agent=f"Mozilla/5.0 ({s.os}) {s.browser}",
            )
        if kind == "usage":
            return Usage(installation_id=s.id, products=rng.sample(s.products, 1), os=s.os, hw_type=s.hw, lang=s.lang)
        if kind == "order":
            currency = "INR" if s.country == "IN" else "EUR"
            amount = rng.choice((19.0, 49.0, 249.0, 990.0)) * (90 if currency == "INR" else 1)
            pay = Payment(
                order_id=self._order_id(),
                provider=rng.choice(("stripe", "paypal")),
                amount=amount,
                currency=currency,
                status=pick(rng, _STATUSES),
            )
            return Order(installation_id=s.id, payment=pay, products=rng.sample(s.products, 1))
        return Support(
            installation_id=s.id,
            user=User(email=s.email),
            note=rng.choice(
                (
                    "cannot activate eSIM profile",
                    "invoice missing VAT number",
                    "please extend trial",
                    "dashboard slow since update",
                )
            ),
            lang=s.lang,
        )

    def awkward(self, s: _Installation, case: str) -> tuple[str, dict[str, Any]]:
        """(kind, payload) for one awkward case: a dict, since most are outside the schema."""
        rng = self.rng
        if case == "card_in_note":
            card = card_number(rng)
            grouped = "-".join(card[i : i + 4] for i in range(0, 16, 4))
            expiry = f"{rng.randint(1, 12):02d}/{rng.randint(27, 31)}"
            note = f"please refund, card {grouped} exp {expiry}, reply to {s.email}"
            return "support", msgspec.to_builtins(Support(installation_id=s.id, user=User(email=s.email), note=note))
        if case in ("card_fields", "cvv", "numeric_order_id"):
            body = msgspec.to_builtins(self.message(s, "order"))
            pay = body["payment"]
            if case == "numeric_order_id":
                pay["order_id"] = int(pay["order_id"][3:])
                return "order", body
            expiry = f"{rng.randint(1, 12):02d}/{rng.randint(27, 31)}"
            pay.update(
                card_number=card_number(rng),
                card_expiry=expiry,
                card_holder=s.name,
                card={"number": card_number(rng), "expiry": expiry, "holder": s.name},
            )
            if case == "cvv":
                where = rng.choice((body, pay, pay["card"]))
                where[rng.choice(("cvv", "cvc"))] = f"{rng.randrange(1000):03d}"
            return "order", body
        if case == "unknown_kind":
            return "telemetry", msgspec.to_builtins(self.message(s, "usage"))
        if case == "email_in_products":
            return "usage", msgspec.to_builtins(Usage(installation_id=s.id, products=[*s.products, s.email]))
        body = msgspec.to_builtins(self.message(s, "session"))
        if case == "ipv6_session":
            body["ip"] = ipv6(rng)
        elif case == "ipv4_mapped":
            body["ip"] = f"::ffff:{s.ip}"
        elif case == "unknown_values":
            body.update(lang="tlh", os="HarmonyOS 4", browser="Mozilla/5.0 (X11; Linux x86_64)", hw_type="kiosk")
        elif case == "vendor_fields":
            body["user"]["phone"] = mobile(rng)
            body.update(
                imei=imei(rng),
                ad_id="38400000-8cf0-11bd-b23e-10b96e40000d",
                birth_date="2012-05-01",
                user_content="draft-contract.docx",
                sw_inventory=["Microsoft Word 16.0", "Steam"],
                vendor_debug={"heap": rng.randint(1000, 9000)},
            )
        elif case == "nulls":
            body.update(user={"name": None, "email": None}, ip=None)
        elif case == "invalid_ip":
            body["ip"] = "unknown"
        elif case == "opt_in_text":
            body["marketing_opt_in"] = "yes"
        return "session", body

    def step(self) -> Sample:
        rng = self.rng
        self.clock.tick(rng, 0.2 * self.tick, 1.8 * self.tick)
        s = rng.choice(self.sites)
        case = self.schedule.next()
        if case:
            kind, body = self.awkward(s, case)
            return Sample(topic(s.id, kind), encode(body), kind, case)
        kind = pick(rng, _KINDS)
        return Sample(topic(s.id, kind), encode(self.message(s, kind)), kind)


def messages(devices: int = 10, seed: int = 1) -> Iterator[Sample]:
    """Endless, deterministic Smartjac traffic from ``devices`` installations."""
    sites = _Sites(devices, seed)
    while True:
        yield sites.step()
