"""Where a webhook may be delivered (SSRF guard, docs/architecture.md §6).

A `reward.url` names a host that keel's workers will POST signed JSON to, from inside the
operator's network. Every address the host resolves to must be public (not loopback, private,
link-local, shared, multicast, reserved or unspecified) unless the operator allows it in
`Settings.webhook_allow`: comma-separated hostnames (exact, case-insensitive) and IP networks
(`10.1.0.0/16`, `127.0.0.1`). Embedded mode (`keel up`) allows loopback. The API checks at job
creation (a 422); the worker checks again before each delivery and connects to the very address
it checked, so a DNS answer that changes in between (rebinding) cannot redirect it.

An IPv6 address that carries an IPv4 one (NAT64 `64:ff9b::/96`, 6to4 `2002::/16`, Teredo,
IPv4-mapped) is public only when the IPv4 address it carries is: `64:ff9b::7f00:1` reaches
127.0.0.1 through a NAT64 gateway, `2002:a00:1::` is 10.0.0.1's 6to4 address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
LOOPBACK = "127.0.0.0/8,::1"


class WebhookTargetRefused(ValueError):
    """The URL's host is not a place this server delivers webhooks to."""


@dataclass(frozen=True)
class WebhookAllow:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, spec: str) -> WebhookAllow:
        hosts, networks = set(), []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def permits(self, host: str, address: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.hosts:
            return True
        if any(address in net for net in self.networks):
            return True
        carried = embedded_ipv4(address)
        if carried is not None:
            return self.permits(host, carried)
        return address.is_global and not address.is_multicast


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (NAT64, 6to4, Teredo client, IPv4-mapped)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    return None


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


@dataclass(frozen=True)
class Target:
    """A checked delivery target: connect to `address`, name `host` (Host header, TLS SNI)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def resolve_target(url: str, allow: WebhookAllow, *, resolve: Resolver = system_resolver) -> Target:
    """The address to deliver `url` to, or WebhookTargetRefused saying why not."""
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookTargetRefused(f"{url!r} is not an http(s) URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
    except (OSError, UnicodeError) as exc:
        raise WebhookTargetRefused(f"the webhook host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise WebhookTargetRefused(f"the webhook host {host!r} does not resolve")
    refused = [a for a in addresses if not allow.permits(host, a)]
    if refused:
        raise WebhookTargetRefused(
            f"the webhook host {host!r} resolves to {refused[0]}, a loopback, private or "
            "otherwise non-public address; an operator may allow it with KEEL_WEBHOOK_ALLOW"
        )
    return Target(url, parts.scheme, host, port, str(addresses[0]))
