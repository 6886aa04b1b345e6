"""Where a webhook may be sent. A webhook must not become a way to reach the service's own
network: a target whose host resolves to a loopback, private, link-local, multicast, reserved,
shared (CGNAT) or cloud-metadata address is refused, at creation and again at every delivery
(after DNS resolution, and the delivery then connects to the very address that was checked, so
a DNS answer that changes in between cannot slip through). An operator opens exceptions with
``DISTILL_WEBHOOK_ALLOWED_HOSTS`` (host names or addresses) and ``DISTILL_WEBHOOK_ALLOWED_CIDRS``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from api.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., list[Any]]

# AWS/GCP/Azure/OpenStack (and AWS over IPv6), Alibaba, Oracle: named so the refusal says so.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)


class TargetRefused(ValueError):
    """The URL may not receive webhooks; the message says why."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]  # what the host resolved to, all checked


@dataclass(frozen=True)
class AllowList:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> AllowList:
        hosts = frozenset(
            h.strip().lower().strip("[]") for h in settings.webhook_allowed_hosts.split(",")
        ) - {""}
        networks = tuple(
            ipaddress.ip_network(c.strip(), strict=False)
            for c in settings.webhook_allowed_cidrs.split(",")
            if c.strip()
        )
        return cls(hosts=hosts, networks=networks)

    def allows(self, host: str, address: IPAddress) -> bool:
        return (
            host.lower() in self.hosts
            or str(address) in self.hosts
            or any(address in net for net in self.networks if net.version == address.version)
        )


def internal_kind(address: IPAddress) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    checks = (
        (address in METADATA_ADDRESSES, "cloud metadata"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_unspecified, "unspecified"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
        (not address.is_global, "non-public"),
    )
    return next((kind for hit, kind in checks if hit), None)


def parse_url(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise TargetRefused("has no host")
    if parts.username or parts.password:
        raise TargetRefused("must not carry credentials; the signature authenticates us")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetRefused("has an invalid port") from exc
    return parts.scheme, parts.hostname.lower(), port


def resolve_target(url: str, allow: AllowList, resolver: Resolver = socket.getaddrinfo) -> Target:
    """Resolve the URL's host and check every address it resolves to."""
    scheme, host, port = parse_url(url)
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"host {host!r} does not resolve ({exc})") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise TargetRefused(f"host {host!r} does not resolve")
    for address in addresses:
        kind = internal_kind(address)
        if kind is not None and not allow.allows(host, address):
            raise TargetRefused(
                f"host {host!r} resolves to {address}, a {kind} address; an operator can allow "
                "it with DISTILL_WEBHOOK_ALLOWED_HOSTS or DISTILL_WEBHOOK_ALLOWED_CIDRS"
            )
    return Target(scheme=scheme, host=host, port=port, addresses=tuple(addresses))
