"""``GenerationConfig``: how to sample an answer, as in LMDeploy's ``GenerationConfig``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from vlm.v1 import common_pb2

_MAX_SEED = 2**64 - 1


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings for one request; pass it as ``gen_config=``.

    ``temperature=0`` (the default) is greedy decoding. ``max_new_tokens=None`` uses the server's
    default. ``stop_words`` end generation and are not part of the answer; ``stop_token_ids`` end
    it in addition to the model's end-of-sequence ids. ``ignore_eos`` keeps generating past the
    model's end-of-sequence ids (up to ``max_new_tokens``, as LMDeploy's and vLLM's do: for
    fixed-length benchmarks). ``random_seed`` (alias ``seed``) makes sampling reproducible.
    """

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop_words: Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    random_seed: int | None = None
    seed: int | None = field(default=None, repr=False)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"{self.max_new_tokens=} must be >= 1 (or None for the server default)")
        if self.temperature < 0:
            raise ValueError(f"{self.temperature=} must be >= 0 (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{self.top_p=} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"{self.top_k=} must be >= 0 (0 means disabled)")
        if self.repetition_penalty <= 0:
            raise ValueError(f"{self.repetition_penalty=} must be > 0 (1.0 means disabled)")
        if self.seed is not None and self.random_seed is not None and self.seed != self.random_seed:
            raise ValueError(f"{self.seed=} and {self.random_seed=} disagree; give one of them")
        seed = self.random_seed if self.random_seed is not None else self.seed
        if seed is not None and not 0 <= seed <= _MAX_SEED:
            raise ValueError(f"seed {seed} must be in 0..2**64-1")
        object.__setattr__(self, "random_seed", seed)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "stop_words", _as_tuple(self.stop_words))
        stop_ids = tuple(int(i) for i in self.stop_token_ids or ())
        if any(i < 0 for i in stop_ids):
            raise ValueError(f"{stop_ids=} must be non-negative token ids")
        object.__setattr__(self, "stop_token_ids", stop_ids)

    def to_pb(self) -> common_pb2.SamplingParams:
        """The ``vlm.v1.SamplingParams`` the gateway takes."""
        params = common_pb2.SamplingParams(
            max_new_tokens=self.max_new_tokens or 0,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=list(self.stop_words or ()),
            stop_token_ids=list(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
        )
        if self.random_seed is not None:
            params.seed = self.random_seed
        return params
