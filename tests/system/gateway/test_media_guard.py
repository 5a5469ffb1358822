"""Media guard (TESTPLAN 16, 17): SSRF, time and byte caps, data URIs, request budgets.

Hermetic: a local aiohttp server on 127.0.0.1 plays every remote host. DNS is patched through
the fetcher's ``lookup`` seam, and the ``dial`` test hook sends every connection to a vetted
address to the local server, so a guard that wrongly accepted an internal address would
reach it and be counted: every refusal also asserts the server was not hit.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.addresses import is_public, literal_ip
from gateway.deadline import Deadline
from gateway.fetch import FetchPolicy, UrlFetcher
from gateway.media_guard import MediaGuard, MediaLimits
from gateway.messages import ImageSource
from tandem.errors import DeadlineExceeded, InvalidInput

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
CAP = 64 * 1024

DNS = {
    "good.example": ["93.184.216.34"],
    "cdn.good.example": ["93.184.216.34"],
    "other.example": ["93.184.216.35"],
    "evil.example": ["127.0.0.1"],
    "meta.example": ["169.254.169.254"],
    "private.example": ["10.0.0.1"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "zero.example": ["0.0.0.0"],
    "mixed.example": ["93.184.216.34", "192.168.1.10"],
    "cgnat.example": ["100.64.0.1"],
    "nat64.example": ["64:ff9b::a00:1"],
}


class Origin:
    """The local server behind every fake host; counts hits per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.port = 0
        self.release = asyncio.Event()

    async def hang(self) -> None:
        """Stall a handler until the test ends."""
        await asyncio.wait_for(self.release.wait(), 30)

    def app(self) -> web.Application:
        @web.middleware
        async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
            self.hits[request.path] += 1
            return await handler(request)

        app = web.Application(middlewares=[count])
        app.router.add_get("/image", lambda r: web.Response(body=PNG, content_type="image/png"))
        app.router.add_get("/html", lambda r: web.Response(text="<html>", content_type="text/html"))
        app.router.add_get("/to-evil", lambda r: _redirect("http://evil.example/image"))
        app.router.add_get("/to-meta", lambda r: _redirect("http://169.254.169.254/latest/meta-data"))
        app.router.add_get("/to-loopback", lambda r: _redirect(f"http://127.0.0.1:{self.port}/image"))
        app.router.add_get("/to-file", lambda r: _redirect("file:///etc/passwd"))
        app.router.add_get("/to-good", lambda r: _redirect("/image"))
        app.router.add_get("/loop", lambda r: _redirect("/loop"))
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/endless", _endless)
        app.router.add_get("/lying-short", _lying_short)
        app.router.add_get("/huge-declared", self._huge_declared)
        return app

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        await self.hang()
        return web.Response(body=PNG, content_type="image/png")

    async def _huge_declared(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": str(10**9)})
        await response.prepare(request)
        await response.write(PNG)
        await self.hang()
        return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)
    while True:
        await response.write(b"\x00" * 16384)


async def _lying_short(request: web.Request) -> web.StreamResponse:
    """Claims 1000 bytes, sends 10, then closes the connection."""
    response = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": "1000"})
    await response.prepare(request)
    await response.write(PNG[:10])
    assert request.transport is not None
    request.transport.close()
    return response


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    server = Origin()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


def make_guard(origin: Origin, limits: MediaLimits | None = None, **policy: object) -> MediaGuard:
    async def lookup(host: str, port: int) -> list[str]:
        if host not in DNS:
            raise OSError("no such host")
        return DNS[host]

    def dial(ip: str, port: int) -> tuple[str, int]:
        return "127.0.0.1", origin.port

    options: dict[str, object] = {"timeout_seconds": 1.5, "connect_timeout_seconds": 1.0, **policy}
    fetcher = UrlFetcher(FetchPolicy(**options), lookup=lookup, dial=dial)  # type: ignore[arg-type]
    return MediaGuard(limits or MediaLimits(4, CAP, 3 * CAP), fetcher)


async def resolve_url(guard: MediaGuard, url: str) -> bytes:
    try:
        (resolved,) = await guard.resolve([ImageSource(url=url)], Deadline())
    finally:
        await guard.fetcher.close()
    return resolved.data


# --- addresses -------------------------------------------------------------------------------

NOT_PUBLIC = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "224.0.0.1", "255.255.255.255", "240.0.0.1", "::1", "::", "fe80::1",
    "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe", "::127.0.0.1", "ff02::1", "2001:db8::1",
]  # fmt: skip


@pytest.mark.parametrize("raw", NOT_PUBLIC)
def test_non_public_addresses_are_refused(raw: str) -> None:
    import ipaddress

    assert not is_public(ipaddress.ip_address(raw))


@pytest.mark.parametrize("raw", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2002:808:808::1"])
def test_public_addresses_pass(raw: str) -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address(raw))


@pytest.mark.parametrize(
    "host", ["2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001", "017700000001"]
)
def test_obfuscated_numeric_hosts_are_refused(host: str) -> None:
    with pytest.raises(InvalidInput, match="dotted-quad"):
        literal_ip(host)


def test_host_names_and_literals_parse() -> None:
    assert literal_ip("good.example") is None
    assert str(literal_ip("[::ffff:7f00:1]")) == "::ffff:7f00:1"
    assert str(literal_ip("8.8.8.8")) == "8.8.8.8"
    with pytest.raises(InvalidInput):
        literal_ip("%31%32%37.0.0.1")


# --- URL fetching ----------------------------------------------------------------------------


async def test_public_host_is_fetched_through_the_vetted_address(origin: Origin) -> None:
    assert await resolve_url(make_guard(origin), "http://good.example/image") == PNG
    assert origin.hits["/image"] == 1


async def test_relative_redirect_on_a_public_host_is_followed(origin: Origin) -> None:
    assert await resolve_url(make_guard(origin), "http://good.example/to-good") == PNG
    assert origin.hits["/image"] == 1


REFUSED = [
    ("http://evil.example/image", "non-public"),
    ("http://meta.example/latest/meta-data", "non-public"),
    ("http://private.example/image", "non-public"),
    ("http://mapped.example/image", "non-public"),
    ("http://zero.example/image", "non-public"),
    ("http://mixed.example/image", "non-public"),
    ("http://cgnat.example/image", "non-public"),
    ("http://nat64.example/image", "non-public"),
    ("http://127.0.0.1:{port}/image", "non-public"),
    ("http://localhost.:{port}/image", "resolved"),
    ("http://0.0.0.0:{port}/image", "non-public"),
    ("http://[::ffff:127.0.0.1]:{port}/image", "non-public"),
    ("http://[::1]:{port}/image", "non-public"),
    ("http://169.254.169.254/latest/meta-data", "non-public"),
    ("http://2130706433:{port}/image", "dotted-quad"),
    ("http://0177.0.0.1:{port}/image", "dotted-quad"),
    ("http://0x7f.0.0.1:{port}/image", "dotted-quad"),
    ("http://good.example/to-evil", "non-public"),
    ("http://good.example/to-meta", "non-public"),
    ("http://good.example/to-loopback", "non-public"),
    ("http://good.example/to-file", "http or https"),
    ("http://good.example/loop", "redirected more than"),
    ("file:///etc/passwd", "http or https"),
    ("gopher://good.example/_GET", "http or https"),
    ("ftp://good.example/image.png", "http or https"),
    ("javascript:alert(1)", "http or https"),
    ("http://user:pw@good.example/image", "user name or password"),
    ("http://nowhere.example/image", "could not be resolved"),
    ("http://good.example/html", "content type"),
    ("http:///image", "host"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
async def test_blocked_urls_are_refused_and_never_reach_the_target(
    origin: Origin, url: str, reason: str
) -> None:
    with pytest.raises(InvalidInput, match=reason) as refused:
        await resolve_url(make_guard(origin), url.format(port=origin.port))
    assert origin.hits["/image"] == 0 and origin.hits["/latest/meta-data"] == 0
    message = str(refused.value)
    for internal in ("127.0.0.1", "10.0.0.1", "169.254", "192.168", "::ffff", "Traceback", "0x"):
        assert internal not in message


async def test_slow_server_is_cut_at_the_fetch_timeout(origin: Origin) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="did not deliver the image within"):
        await resolve_url(make_guard(origin, timeout_seconds=0.5), "http://good.example/slow")
    assert time.monotonic() - started < 3.0
    assert origin.hits["/slow"] == 1


async def test_caller_deadline_caps_the_fetch(origin: Origin) -> None:
    guard = make_guard(origin, timeout_seconds=10.0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        try:
            await guard.resolve([ImageSource(url="http://good.example/slow")], Deadline.after(0.4))
        finally:
            await guard.fetcher.close()
    assert time.monotonic() - started < 3.0


async def test_endless_body_stops_at_the_byte_cap(origin: Origin) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="too large"):
        await resolve_url(make_guard(origin), "http://good.example/endless")
    assert time.monotonic() - started < 3.0


async def test_declared_length_over_the_cap_is_refused_before_reading(origin: Origin) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="too large"):
        await resolve_url(make_guard(origin), "http://good.example/huge-declared")
    assert time.monotonic() - started < 2.0


async def test_lying_content_length_is_refused(origin: Origin) -> None:
    with pytest.raises(InvalidInput, match="cut short"):
        await resolve_url(make_guard(origin), "http://good.example/lying-short")


async def test_domain_allow_list(origin: Origin) -> None:
    assert await resolve_url(
        make_guard(origin, allowed_domains=("good.example",)), "http://cdn.good.example/image"
    )
    with pytest.raises(InvalidInput, match="allow-list"):
        await resolve_url(make_guard(origin, allowed_domains=("good.example",)), "http://other.example/image")
    with pytest.raises(InvalidInput, match="allow-list"):
        await resolve_url(make_guard(origin, allowed_domains=("good.example",)), "http://93.184.216.34/image")


async def test_private_addresses_only_with_the_explicit_option(origin: Origin) -> None:
    url = f"http://127.0.0.1:{origin.port}/image"
    with pytest.raises(InvalidInput):
        await resolve_url(make_guard(origin), url)
    assert origin.hits["/image"] == 0
    assert await resolve_url(make_guard(origin, allow_private=True), url) == PNG


# --- data URIs and budgets -------------------------------------------------------------------


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


async def test_data_uri_is_decoded(origin: Origin) -> None:
    (image,) = await make_guard(origin).resolve([ImageSource(url=data_uri(PNG))], Deadline())
    assert image.data == PNG and image.media_type == "image/png"


async def test_large_data_uri_is_decoded_in_a_thread(origin: Origin) -> None:
    data = PNG + bytes(range(256)) * (8 * 1024)  # 2 MiB: over the inline-decode threshold
    limits = MediaLimits(max_images=1, max_image_bytes=4 * 1024 * 1024, max_request_bytes=4 * 1024 * 1024)
    (image,) = await make_guard(origin, limits=limits).resolve([ImageSource(url=data_uri(data))], Deadline())
    assert image.data == data and image.media_type == "image/png"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("data:image/png;base64," + "A" * (2 * CAP), "too large"),
        ("data:image/png;base64,@@@@not-base64", "not valid base64"),
        ("data:image/png;base64,QUJD\nREVG", "not valid base64"),
        ("data:image/png;base64,QUJ", "not valid base64"),
        ("data:text/html;base64," + base64.b64encode(b"<html>").decode(), "media type"),
        ("data:;base64," + base64.b64encode(PNG).decode(), "media type"),
        ("data:image/png,rawbytes", "base64 encoded"),
        ("data:image/png;base64", "no ','"),
        ("data:image/png;base64,", "no image data"),
    ],
)
async def test_bad_data_uris_are_refused(origin: Origin, url: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        await make_guard(origin).resolve([ImageSource(url=url)], Deadline())


async def test_oversized_base64_is_refused_without_decoding(origin: Origin) -> None:
    huge = "data:image/png;base64," + "A" * (8 * 1024 * 1024)
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="too large"):
        await make_guard(origin).resolve([ImageSource(url=huge)], Deadline())
    assert time.monotonic() - started < 1.0


async def test_raw_bytes_over_the_per_image_cap(origin: Origin) -> None:
    with pytest.raises(InvalidInput, match="too large"):
        await make_guard(origin).resolve([ImageSource(data=b"\x00" * (CAP + 1))], Deadline())


async def test_too_many_images(origin: Origin) -> None:
    with pytest.raises(InvalidInput, match="too many images: 5; at most 4"):
        await make_guard(origin).resolve([ImageSource(data=PNG)] * 5, Deadline())


async def test_many_small_images_over_the_request_budget(origin: Origin) -> None:
    each = CAP - 10
    sources = [ImageSource(url=data_uri(b"\x00" * each))] * 4
    with pytest.raises(InvalidInput, match="request's images total more than"):
        await make_guard(origin).resolve(sources, Deadline())


async def test_url_bytes_count_against_the_request_budget(origin: Origin) -> None:
    limits = MediaLimits(max_images=3, max_image_bytes=CAP, max_request_bytes=CAP)
    sources = [ImageSource(data=b"\x00" * (CAP - 100)), ImageSource(url="http://good.example/image")]
    with pytest.raises(InvalidInput, match="request's images total more than"):
        await resolve_many(make_guard(origin, limits=limits), sources)


async def resolve_many(guard: MediaGuard, sources: list[ImageSource]) -> None:
    try:
        await guard.resolve(sources, Deadline())
    finally:
        await guard.fetcher.close()


@pytest.mark.parametrize("image_id", ["abc", "../../etc", "A" * 64, "g" * 64])
async def test_malformed_image_ids_are_refused(origin: Origin, image_id: str) -> None:
    with pytest.raises(InvalidInput, match="image_id"):
        await make_guard(origin).resolve([ImageSource(image_id=image_id)], Deadline())
