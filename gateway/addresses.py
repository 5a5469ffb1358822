"""Which network addresses an image URL may reach: public unicast only.

``vet_address`` refuses every address that is not globally routable, looking through the
IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64), so
``::ffff:127.0.0.1`` is as loopback as ``127.0.0.1`` (IPv4-mapped addresses are never
global, so they are refused whatever they embed). ``literal_ip`` parses a URL host that is
an IP literal and refuses the numeric spellings that browsers and ``inet_aton`` accept but
that only serve to hide an address (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator

from tandem.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")

NOT_PUBLIC = "the image URL points to a non-public network address; only public http(s) hosts are allowed"


def _embedded(ip: IPAddress) -> Iterator[IPAddress]:
    """``ip`` and every IPv4 address an IPv6 form of it carries."""
    yield ip
    if not isinstance(ip, ipaddress.IPv6Address):
        return
    if ip.ipv4_mapped is not None:
        yield ip.ipv4_mapped
    if ip.sixtofour is not None:
        yield ip.sixtofour
    if ip.teredo is not None:
        yield from ip.teredo
    if any(ip in net for net in _NAT64) or int(ip) >> 32 == 0:
        yield ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def _is_public_one(ip: IPAddress) -> bool:
    if ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_unspecified:
        return False
    if ip.is_multicast or ip.is_reserved or not ip.is_global:
        return False
    return not (isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64[1])


def is_public(ip: IPAddress) -> bool:
    """True when ``ip`` and every address embedded in it are public unicast addresses."""
    return all(_is_public_one(view) for view in _embedded(ip))


def vet_address(raw: str, allow_private: bool = False) -> IPAddress:
    """Parse a resolved address and refuse it unless public (or private ones are allowed)."""
    ip = ipaddress.ip_address(raw.split("%", 1)[0])
    if not allow_private and not is_public(ip):
        raise InvalidInput(NOT_PUBLIC)
    return ip


def normalise_host(host: str) -> str:
    """Lower-case ``host`` without a trailing dot; refuse names that are not plain DNS names."""
    name = host.lower().rstrip(".")
    if not name or len(name) > 253:
        raise InvalidInput("the image URL has no valid host name")
    return name


def literal_ip(host: str) -> IPAddress | None:
    """The IP a URL host spells literally, None for a host name; obfuscated numbers are refused."""
    name = normalise_host(host).strip("[]")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    last_label = name.rsplit(".", 1)[-1]
    if _NUMERIC_LABEL.fullmatch(last_label) or _inet_aton_accepts(name):
        raise InvalidInput(
            "the image URL's host is a number that is not a plain dotted-quad IP address; use a host name"
        )
    if not _HOSTNAME.fullmatch(name):
        raise InvalidInput("the image URL has no valid host name")
    return None


def _inet_aton_accepts(name: str) -> bool:
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return True
