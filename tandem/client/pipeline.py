"""``Pipeline``: the synchronous, LMDeploy-style client, and the ``pipeline()`` factory.

::

    from tandem import pipeline, GenerationConfig

    pipe = pipeline("localhost:50051")  # or pipeline(): $TANDEM_ADDRESS, else localhost:50051
    print(pipe(("describe this image", "cat.png")).text)
    sess = pipe.chat("hi")
    sess = pipe.chat("and then?", session=sess)
    print(sess.response.text)

Every method runs the ``AsyncPipeline`` coroutine of the same name on a private event loop
thread, so behaviour (batching, streaming, errors) is identical in both clients. ``Session`` is
the sync pipeline's handle of a server-side chat session.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, Unpack, overload

from tandem.client.async_pipeline import (
    AsyncPipeline,
    BatchPrompts,
    GenConfigs,
    OnePrompt,
    SessionHandle,
    session_id_of,
)
from tandem.client.channel import ConnectionArgs
from tandem.client.config import GenerationConfig
from tandem.client.loop_thread import LoopThread
from tandem.client.response import HistoryMessage, ModelInfo, Response, SessionInfo


def _shutdown(loop: LoopThread, client: AsyncPipeline) -> None:
    if loop.running:
        loop.run(client.close())
    loop.stop()


class Pipeline:
    """A blocking client of a Tandem gateway; ``close()`` it (or use ``with``) when done.

    Takes the arguments of ``AsyncPipeline``: ``address`` (None: ``$TANDEM_ADDRESS``, else
    localhost:50051), ``gen_config`` and the connection keywords.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        gen_config: GenerationConfig | None = None,
        **connection: Unpack[ConnectionArgs],
    ):
        self.aio = AsyncPipeline(address, gen_config=gen_config, **connection)
        self._loop = LoopThread()
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self.aio)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel and stop the client's event loop thread."""
        self._finalizer()

    @property
    def gen_config(self) -> GenerationConfig:
        """The default sampling settings of this pipeline."""
        return self.aio.gen_config

    @overload
    def infer(
        self, prompts: OnePrompt, gen_config: GenConfigs = None, *, timeout: float | None = None
    ) -> Response: ...
    @overload
    def infer(
        self, prompts: BatchPrompts, gen_config: GenConfigs = None, *, timeout: float | None = None
    ) -> list[Response]: ...
    def infer(
        self, prompts: Any, gen_config: GenConfigs = None, *, timeout: float | None = None
    ) -> Response | list[Response]:
        """Answer one prompt (-> ``Response``) or a batch (a list -> answers in prompt order)."""
        return self._loop.run(self.aio.infer(prompts, gen_config, timeout=timeout))

    __call__ = infer

    def stream_infer(
        self, prompts: object, gen_config: GenConfigs = None, *, timeout: float | None = None
    ) -> Iterator[Response]:
        """Yield answer chunks (``.text`` holds the new text) as they arrive."""
        return self._loop.iterate(self.aio.stream_infer(prompts, gen_config, timeout=timeout))

    def chat(
        self,
        prompt: object,
        session: Session | str | None = None,
        gen_config: GenerationConfig | None = None,
        *,
        system_prompt: str = "",
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Session:
        """One chat turn; returns the session with ``.response`` set (a new one if none given).

        ``session`` may be a ``Session`` or the id of any live session, e.g. one another process
        created. A retry with the same ``request_id`` returns the committed answer again.
        """
        sid = None if session is None else session_id_of(session)
        handle = self._loop.run(
            self.aio.chat(
                prompt, sid, gen_config, system_prompt=system_prompt, timeout=timeout, request_id=request_id
            )
        )
        target = session if isinstance(session, Session) else Session(self, handle.session_id)
        target.response = handle.response
        return target

    def stream_chat(
        self,
        prompt: object,
        session: Session | str,
        gen_config: GenerationConfig | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Iterator[Response]:
        """Add one user turn to ``session`` and yield the answer's chunks as they arrive."""
        chunks = self.aio.stream_chat(
            prompt, session_id_of(session), gen_config, timeout=timeout, request_id=request_id
        )
        return self._loop.iterate(chunks)

    def create_session(self, system_prompt: str = "", ttl_seconds: int = 0) -> Session:
        """Start an empty server-side session."""
        handle = self._loop.run(self.aio.create_session(system_prompt, ttl_seconds))
        return Session(self, handle.session_id)

    def get_session(self, session: Session | str) -> SessionInfo:
        """The session with its committed history."""
        return self._loop.run(self.aio.get_session(session_id_of(session)))

    def list_sessions(self, page_size: int = 0) -> list[SessionInfo]:
        """All live sessions (without their messages)."""
        return self._loop.run(self.aio.list_sessions(page_size))

    def end_session(self, session: Session | str) -> None:
        """Delete the session and its history on the server."""
        self._loop.run(self.aio.end_session(session_id_of(session)))

    def model_info(self) -> ModelInfo:
        """What the gateway serves."""
        return self._loop.run(self.aio.model_info())


class Session(SessionHandle[Pipeline]):
    """A chat session of a sync ``Pipeline``: ``pipe.chat(prompt, session=sess)`` continues it."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def history(self) -> list[HistoryMessage]:
        """The committed messages, read from the gateway."""
        return list(self._pipe.get_session(self.session_id).messages)

    def chat(self, prompt: object, gen_config: GenerationConfig | None = None) -> Session:
        """Add one user turn; same as ``pipe.chat(prompt, session=self)``."""
        return self._pipe.chat(prompt, session=self, gen_config=gen_config)

    def close(self) -> None:
        """Delete the session on the server."""
        self._pipe.end_session(self.session_id)


def pipeline(
    address: str | None = None,
    *,
    gen_config: GenerationConfig | None = None,
    **connection: Unpack[ConnectionArgs],
) -> Pipeline:
    """A ``Pipeline`` connected to the gateway at ``address`` (LMDeploy's entry point); with no
    address, ``$TANDEM_ADDRESS``, else localhost:50051.

    Options: ``gen_config``, ``token``, ``tls``, ``root_certificates``, ``timeout``,
    ``max_concurrency``, ``max_message_bytes`` (see ``Pipeline``).
    """
    return Pipeline(address, gen_config=gen_config, **connection)
