"""A session's images are kept in the state role and sent again when the cache lost them
(issue 11, finding 5: cache pressure made a session unanswerable). Over the fake downstream,
whose ``known`` set is the cache's image bytes: a turn keeps its images for the session TTL, a
later turn whose history images the cache forgot re-encodes them from the kept bytes (also on
the inline retry after an evicted embedding), and an image nobody kept is still NOT_FOUND."""

from __future__ import annotations

import pytest

from gateway.deadline import Deadline
from gateway.messages import ImageSource, Sampling
from gateway.service import Gateway
from gateway.session_images import MemorySessionImages
from tandem.errors import NotFound
from tests.support.fake_downstream import FakeDownstream, chunks_of, gateway_over, image_id

PNG = b"\x89PNG\r\n\x1a\nsession-image"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def keeping(downstream: FakeDownstream, images: MemorySessionImages) -> Gateway:
    plain = gateway_over(downstream)
    return Gateway(plain.pipeline, plain.sessions, images=images)


async def _turn(gateway: Gateway, session_id: str, *parts: str | ImageSource) -> str:
    chunks = await chunks_of(gateway.chat(session_id, parts, Sampling(), "", Deadline()))
    return "".join(c.text for c in chunks)


async def test_a_turn_keeps_its_images_for_the_session_ttl() -> None:
    clock = Clock()
    images = MemorySessionImages(clock=clock)
    gateway = keeping(FakeDownstream(), images)
    session = await gateway.create_session("", 300)
    await _turn(gateway, session.session_id, ImageSource(data=PNG), "what is it?")
    assert await images.recall([image_id(PNG)]) == {image_id(PNG): PNG}
    clock.now += 299
    assert await images.recall([image_id(PNG)])
    clock.now += 2
    assert await images.recall([image_id(PNG)]) == {}


async def test_history_images_the_cache_lost_are_sent_again_from_the_kept_bytes() -> None:
    downstream = FakeDownstream()
    gateway = keeping(downstream, MemorySessionImages())
    session_id = (await gateway.create_session("", 300)).session_id
    await _turn(gateway, session_id, ImageSource(data=PNG), "what is it?")
    downstream.known.clear()  # evicted from the cache
    assert await _turn(gateway, session_id, "and now?") == "u2.."
    sent_by_id, sent_again = downstream.encodes[-2][0], downstream.encodes[-1][0]
    assert sent_by_id[0].image_id == image_id(PNG) and sent_again[0].data == PNG

    downstream.known.clear()
    downstream.evicted.add(image_id(PNG))  # the embedding too: the inline retry needs the bytes
    assert await _turn(gateway, session_id, "still there?") == "u3.."
    inputs, force_inline = downstream.encodes[-1]
    assert force_inline and inputs[0].data == PNG


async def test_without_kept_bytes_a_lost_image_is_not_found() -> None:
    downstream = FakeDownstream()
    gateway = gateway_over(downstream)  # no session images: the cache alone holds them
    session_id = (await gateway.create_session("", 300)).session_id
    await _turn(gateway, session_id, ImageSource(data=PNG), "what is it?")
    downstream.known.clear()
    with pytest.raises(NotFound):
        await _turn(gateway, session_id, "and now?")


async def test_an_image_named_by_id_is_kept_from_the_cache_or_refused() -> None:
    cache = {image_id(PNG): PNG}
    images = MemorySessionImages(cache)
    await images.keep([(image_id(PNG), None)], 60)
    assert await images.recall([image_id(PNG)]) == {image_id(PNG): PNG}
    with pytest.raises(NotFound, match="send the image bytes again"):
        await images.keep([("0" * 64, None)], 60)
