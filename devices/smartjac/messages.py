"""Smartjac records, one Struct per topic kind (field names are the pack's paths).

Card data is not part of these types: cards go to PayPal or Stripe, never to Smartjac, and the
simulator adds card fields and CVVs to raw payloads only as awkward cases.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["BY_KIND", "Geo", "Order", "Payment", "Session", "Support", "Usage", "User"]


class _S(msgspec.Struct, omit_defaults=True, frozen=True, kw_only=True):
    pass


class User(_S):
    name: str | None = None
    email: str | None = None


class Geo(_S):
    """The area the server derived from the IP address."""

    country: str | None = None  # ISO 3166-1 alpha-2
    region: str | None = None


class _Record(_S):
    installation_id: str  # the topic's installation level


class Session(_Record, kw_only=True):
    """kind ``session``: a sign-in to the Site or Software (Collection/Identity, Geo; Sites)."""

    user: User | None = None
    marketing_opt_in: bool | None = None
    ip: str | None = None
    geo: Geo | None = None
    lang: str | None = None  # "fi-FI"
    products: list[str] | None = None
    os: str | None = None
    browser: str | None = None
    hw_type: str | None = None  # desktop | laptop | tablet | phone-... | server
    user_agent: str | None = None


class Usage(_Record, kw_only=True):
    """kind ``usage``: which products an installation uses (Collection/Products)."""

    products: list[str] | None = None
    os: str | None = None
    hw_type: str | None = None
    lang: str | None = None


class Payment(_S):
    order_id: str | int
    provider: str | None = None  # paypal | stripe
    amount: float | None = None
    currency: str | None = None
    status: str | None = None  # pending | paid | failed | refunded | cancelled


class Order(_Record, kw_only=True):
    """kind ``order``: payment metadata of an order (Sharing/Processors)."""

    payment: Payment
    products: list[str] | None = None


class Support(_Record, kw_only=True):
    """kind ``support``: a support request with the user's note."""

    user: User | None = None
    note: str | None = None
    lang: str | None = None


BY_KIND: Final[dict[str, type[msgspec.Struct]]] = {
    "session": Session,
    "usage": Usage,
    "order": Order,
    "support": Support,
}
"""The Struct for each topic kind."""
