"""Network operations: keep only the network part of an IP address.

A /24 (IPv4) or /48 (IPv6) still tells the cloud the operator and region of a
login, which is what diagnostics need, without naming a household. IPv4-mapped
IPv6 addresses (``::ffff:203.0.113.7``) and 6to4 addresses (``2002:cb00:714d::``,
which embed 203.0.113.77) are truncated with the IPv4 prefix, so they cannot be
used to slip a full IPv4 address through an IPv6 rule.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from msgspec import UNSET

from gateway.ops.base import BoundedCache, BuildEnv, Compiled, FieldRule, per_value


class TruncateIp(FieldRule, tag="truncate_ip"):
    """Zero the host bits of an IPv4/IPv6 address; an invalid address is removed and counted."""

    accepts = str
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48

    def __post_init__(self) -> None:
        if not 0 <= self.ipv4_prefix <= 32:
            raise ValueError("ipv4_prefix must be between 0 and 32")
        if not 0 <= self.ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be between 0 and 128")

    def build(self, env: BuildEnv) -> Compiled:
        cache: BoundedCache[Any, Any] = BoundedCache(env.cache_size)
        stats, label = env.stats, self.label()
        mask4 = (0xFFFFFFFF << (32 - self.ipv4_prefix)) & 0xFFFFFFFF
        mask6 = ((1 << 128) - 1) ^ ((1 << (128 - self.ipv6_prefix)) - 1)
        prefix6to4 = 16 + self.ipv4_prefix  # 2002::/16, then the embedded IPv4 address
        mask6to4 = ((1 << 128) - 1) ^ ((1 << (128 - prefix6to4)) - 1)

        def truncate_ip(value: str) -> Any:
            hit = cache.get(value)
            if hit is not None:
                return hit
            try:
                ip = ipaddress.ip_address(value.strip())
            except ValueError:
                stats[(label, "invalid_ip")] += 1
                return UNSET
            if ip.version == 4:
                out = str(ipaddress.IPv4Address(int(ip) & mask4))
            elif ip.ipv4_mapped is not None:
                out = "::ffff:" + str(ipaddress.IPv4Address(int(ip.ipv4_mapped) & mask4))
            elif ip.sixtofour is not None:  # 2002:AABB:CCDD::/48 is the site's IPv4 AA.BB.CC.DD
                out = str(ipaddress.IPv6Address(int(ip) & mask6 & mask6to4))
            else:
                out = str(ipaddress.IPv6Address(int(ip) & mask6))
            return cache.put(value, out)

        def fuse(p: str) -> tuple[str, list[str], dict[str, Any]]:  # a cache hit without the call
            return f"(r := {p}cache.get(v)) is not None", ["v = r"], {f"{p}cache": cache}

        return Compiled(truncate_ip, per_value(fuse))
