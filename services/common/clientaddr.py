"""Which address a request comes from, for the per-address limit on failed authentications.

Pure. Behind a reverse proxy every request has the proxy's peer address, so the client's is
read from a header (``X-Forwarded-For``); that header is whatever the client wrote unless a
proxy we trust wrote it, so it is believed only from configured proxies, and read from the
right: the rightmost address not itself a trusted proxy is the one our proxies saw.
"""

from __future__ import annotations

import functools
import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: IPv6 clients are limited per /64: one host usually holds a whole /64, so per-address
#: buckets would give it 2^64 of them.
IPV6_PREFIX = 64


def parse_networks(spec: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 192.0.2.7"`` → networks; ``ValueError`` naming a bad entry."""
    networks: list[Network] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"trusted proxy {item!r} is not an address or network") from exc
    return tuple(networks)


def _trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: ``peer`` unless ``peer`` is a trusted proxy that sent a
    ``forwarded`` (X-Forwarded-For) list, then the rightmost entry that is not a trusted
    proxy (or the leftmost if all are). An unparseable entry ends the walk at ``peer``:
    a proxy of ours writes addresses, so anything else came from the client."""
    if not peer:
        return "unknown"
    if not forwarded or not trusted or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer


#: Distinct addresses whose keys are remembered: parsing one costs ~6 µs, paid on every
#: request of a connection without it (a fleet reuses few addresses: devices, gateways, NAT).
LIMIT_KEY_CACHE_SIZE = 16384


@functools.lru_cache(maxsize=LIMIT_KEY_CACHE_SIZE)
def limit_key(address: str) -> str:
    """The rate limiter's key for an address: itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def check_proxy_settings(client_ip_header: str, trusted_proxies: str) -> None:
    """``ValueError`` unless the two settings make sense together (for settings validators)."""
    if client_ip_header and not trusted_proxies:
        raise ValueError(
            "client_ip_header needs trusted_proxies: believed from any peer, the header "
            "would let every client choose the address it is rate-limited as"
        )
    parse_networks(trusted_proxies)  # raises ValueError on a bad address
