"""Fetching image URLs without letting a client reach what it must not (SSRF) or stall us.

Rules, checked on the first URL and again on every redirect hop:

- scheme ``http`` or ``https`` only; no ``user:password@``; optional domain allow-list;
- an IP-literal host must be public, and obfuscated numeric hosts are refused
  (``addresses.literal_ip``);
- a host name is resolved here (``lookup``, by default ``loop.getaddrinfo``) and EVERY address
  must be public; aiohttp then connects to exactly those vetted addresses (our resolver is the
  only one it has), sending the original ``Host`` header and TLS server name, so a DNS answer
  that changes between check and connect (rebinding) cannot slip in;
- redirects are followed by hand, at most ``max_redirects``;
- one total time limit (capped by the caller's deadline), a connect and a read timeout;
- the body is read in chunks and refused as soon as it passes the per-image cap or the
  request's byte budget, whatever ``Content-Length`` claims; no decompression, no cookies,
  no proxies from the environment.

``allow_private`` lifts the address check for development and tests only; it is off by
default. ``dial`` is a test hook that maps a vetted address to the one actually dialled.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.addresses import literal_ip, normalise_host, vet_address
from gateway.budget import ByteBudget
from gateway.deadline import Deadline
from tandem.errors import DeadlineExceeded, InvalidInput

log = logging.getLogger(__name__)

Lookup = Callable[[str, int], Awaitable[list[str]]]
Dial = Callable[[str, int], tuple[str, int]]

_REDIRECTS = {301, 302, 303, 307, 308}
_READ_CHUNK = 64 * 1024


async def system_lookup(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host``."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of URL fetching."""

    timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 5.0
    max_redirects: int = 3
    allowed_domains: tuple[str, ...] = ()
    allow_private: bool = False

    def domain_allowed(self, host: str) -> bool:
        if not self.allowed_domains:
            return True
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)


class _VettingResolver(AbstractResolver):
    """aiohttp resolver that returns only vetted addresses (and refuses the rest)."""

    def __init__(self, lookup: Lookup, allow_private: bool, dial: Dial | None):
        self._lookup = lookup
        self._allow_private = allow_private
        self._dial = dial

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        try:
            addresses = await self._lookup(host, port)
        except OSError:
            raise InvalidInput("the image URL's host name could not be resolved") from None
        if not addresses:
            raise InvalidInput("the image URL's host name could not be resolved")
        vetted = [vet_address(raw, self._allow_private) for raw in addresses]
        results: list[ResolveResult] = []
        for ip in vetted:
            dial_host, dial_port = (str(ip), port) if self._dial is None else self._dial(str(ip), port)
            fam = socket.AF_INET6 if ":" in dial_host else socket.AF_INET
            results.append(
                {
                    "hostname": host,
                    "host": dial_host,
                    "port": dial_port,
                    "family": fam,
                    "proto": 0,
                    "flags": 0,
                }
            )
        return results

    async def close(self) -> None:
        return None


class UrlFetcher:
    """Fetches image URLs under the rules above; owns one aiohttp session (``close()`` it)."""

    def __init__(self, policy: FetchPolicy, lookup: Lookup = system_lookup, dial: Dial | None = None):
        self.policy = policy
        self._lookup = lookup
        self._dial = dial
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            resolver = _VettingResolver(self._lookup, self.policy.allow_private, self._dial)
            connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=64)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(
                    connect=self.policy.connect_timeout_seconds, sock_read=self.policy.timeout_seconds
                ),
                headers={"User-Agent": "tandem-gateway", "Accept": "image/*", "Accept-Encoding": "identity"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str, max_bytes: int, budget: ByteBudget, deadline: Deadline) -> bytes:
        """The body of ``url`` (after redirects); refusals are ``InvalidInput``."""
        limit = deadline.cap(self.policy.timeout_seconds)
        deadline_binds = deadline.binds(self.policy.timeout_seconds)
        try:
            async with asyncio.timeout(limit):
                return await self._follow(url, max_bytes, budget)
        except TimeoutError:
            if deadline_binds:
                raise DeadlineExceeded("deadline exceeded while fetching an image URL") from None
            raise InvalidInput(
                f"the image URL did not deliver the image within {self.policy.timeout_seconds:g} s; "
                "send the image bytes instead"
            ) from None
        except aiohttp.ClientPayloadError:
            raise InvalidInput(
                "the image URL's response was cut short; send the image bytes instead"
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            log.info("image URL fetch failed: %s", type(exc).__name__)
            raise InvalidInput("could not fetch the image URL; check that it is publicly reachable") from None

    async def _follow(self, url: str, max_bytes: int, budget: ByteBudget) -> bytes:
        target = self.check_url(url)
        for _ in range(self.policy.max_redirects + 1):
            async with self._client().get(target, allow_redirects=False) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location", "")
                    if not location:
                        raise InvalidInput("the image URL redirected without a Location")
                    target = self.check_url(str(target.join(yarl.URL(location))))
                    continue
                if response.status != 200:
                    raise InvalidInput(f"fetching the image URL failed with HTTP status {response.status}")
                _check_content_type(response.content_type)
                return await _read_capped(response, max_bytes, budget)
        raise InvalidInput(f"the image URL redirected more than {self.policy.max_redirects} times")

    def check_url(self, url: str) -> yarl.URL:
        """Parse ``url`` and apply the scheme, credential, host-literal and allow-list rules."""
        try:
            parsed = yarl.URL(url)
        except (ValueError, TypeError):
            raise InvalidInput("the image URL is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise InvalidInput("image URLs must use http or https (or send a data: URI or the bytes)")
        if parsed.user is not None or parsed.password is not None:
            raise InvalidInput("image URLs must not carry a user name or password")
        if not parsed.raw_host:
            raise InvalidInput("the image URL has no host")
        host = normalise_host(parsed.raw_host)
        ip = literal_ip(host)
        if ip is not None:
            vet_address(str(ip), self.policy.allow_private)
        elif not self.policy.domain_allowed(host):
            raise InvalidInput("the image URL's domain is not on this server's allow-list")
        if ip is not None and self.policy.allowed_domains:
            raise InvalidInput("the image URL's domain is not on this server's allow-list")
        return parsed


def _check_content_type(content_type: str) -> None:
    if not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise InvalidInput("the image URL did not return an image (its content type is not image/*)")


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int, budget: ByteBudget) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise InvalidInput(f"the image at the URL is too large ({declared} bytes; at most {max_bytes})")
    body = bytearray()
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise InvalidInput(f"the image at the URL is too large (more than {max_bytes} bytes)")
        budget.take(len(chunk))
    if declared is not None and len(body) != declared:
        raise InvalidInput("the image URL's response was cut short; send the image bytes instead")
    return bytes(body)
