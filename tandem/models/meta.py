"""Build a module from its config without allocating or initialising its parameters.

Both workers build their half of the model from the config, then fill it with ``load_subset``:
the parameters go on the meta device (no memory, no init cost) while buffers that checkpoints
do not hold (position ids, rotary frequencies) are computed by the constructors for real.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

M = TypeVar("M")

_LOCK = threading.Lock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device; buffers stay real.

    It patches ``torch.nn.Module.register_parameter`` process-wide while active, so it is meant
    for start-up only and is serialised by one lock shared by every caller in the process.
    """
    with _LOCK:  # held while reading the original: concurrent callers never restore a patch
        original: Callable[..., None] = torch.nn.Module.register_parameter

        def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
            if param is not None and param.device.type != "meta":
                param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            original(module, name, param)

        torch.nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_empty(factory: Callable[[], M]) -> M:
    """``factory()`` with its parameters on the meta device (see ``parameters_on_meta``)."""
    with parameters_on_meta():
        return factory()
