"""SSRF guard for rest-hook endpoints: the bus only calls hosts an operator listed.

Why two checks: a subscriber chooses the URL the bus will POST patient events to, from
inside the care network. At creation the URL must be https (http only when settings
allow it, for loopback development), carry no credentials, and name a host on the
allow-list (`eparcours.allowed_hosts`: exact names or `*.domain`). At every delivery the
host is resolved again and *every* address is checked: public addresses pass, private /
loopback / shared ranges only when listed in `eparcours.allowed_networks`, link-local
(169.254.0.0/16, fe80::/10: cloud metadata services) and unspecified / multicast never.
The request is then sent to the checked address itself (the URL keeps its name for the
Host header and TLS SNI / certificate check), so a DNS answer that changes between the
check and the connection (DNS rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from bus.settings import EparcoursSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


class EndpointRefused(ValueError):
    """The endpoint may not be called (the message says why, without secrets)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked endpoint: where to connect (`ip`) and what to call it (`host`)."""

    scheme: str
    host: str
    port: int
    ip: str


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    allowed_hosts: tuple[str, ...] = ()
    allow_http: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: EparcoursSettings) -> EndpointPolicy:
        return cls(
            allowed_hosts=tuple(h.strip().lower().rstrip(".") for h in settings.allowed_hosts),
            allow_http=settings.allow_http,
            allowed_networks=tuple(
                ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks
            ),
        )

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self.allowed_hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and host != pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def check_ip(self, raw: str | IPAddress) -> None:
        """Raise EndpointRefused unless the bus may connect to this address."""
        ip = ipaddress.ip_address(raw) if isinstance(raw, str) else raw
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in _LINK_LOCAL):
            raise EndpointRefused(f"{ip} is link-local (cloud metadata range): never called")
        if ip.is_unspecified or ip.is_multicast:
            raise EndpointRefused(f"{ip} is not a unicast address")
        if ip.is_global:
            return
        if not any(ip in net for net in self.allowed_networks):
            raise EndpointRefused(f"{ip} is a non-public address not allowed by settings")

    def check_url(self, url: str) -> tuple[str, str, int]:
        """Static checks at subscription time → (scheme, host, port)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise EndpointRefused(f"endpoint is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            raise EndpointRefused("endpoint must use https")
        if parts.username or parts.password:
            raise EndpointRefused("endpoint must not embed credentials (use channel.header)")
        host = (parts.hostname or "").lower()
        if not host:
            raise EndpointRefused("endpoint has no host")
        if not self.host_allowed(host):
            raise EndpointRefused(f"host {host} is not on the e-parcours allow-list")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self.check_ip(literal)
        return scheme, host, port or (443 if scheme == "https" else 80)

    async def resolve(self, url: str) -> Target:
        """Delivery-time check: static rules, then every resolved address."""
        scheme, host, port = self.check_url(url)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise EndpointRefused(f"cannot resolve {host}: {exc.strerror or exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise EndpointRefused(f"{host} has no address")
        for address in addresses:  # one bad answer taints the name: refuse it all
            self.check_ip(address.split("%", 1)[0])
        return Target(scheme, host, port, addresses[0].split("%", 1)[0])
