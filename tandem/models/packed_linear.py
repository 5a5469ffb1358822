"""Linear layers with their weights prepacked once for oneDNN, for models that run on a CPU.

``nn.Linear`` on a CPU calls MKL's sgemm, which repacks the whole weight matrix into its
blocked layout on every call that has more than one row. A decode step of a few rows is then
bound by that copy, not by the matmul: measured on this project's 2-core AVX2 machine, a
SmolLM2-135M decode step took 197 ms at 4 rows against 93 ms at 1 row, and 100 ms at 4 rows with
the weights packed once at load (prefill of 238 positions 1.25x faster; outputs within float32
rounding, 3e-6 on hidden states of magnitude 4). vLLM's CPU backend does the same (its x86
linear layers hold oneDNN-packed weights).

``prepack_linears(module)`` swaps every ``nn.Linear`` inside ``module`` for a ``PackedLinear``
holding ``torch.ops.mkldnn``'s reordered weight (the op torch's own compiler emits for frozen CPU
linears). It does nothing where that cannot help or run: another device, a dtype oneDNN does not
compute natively here (bf16 without AVX512-BF16/AMX, float16), or a torch without the ops.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

KERNELS = ("onednn", "torch")
# The row count oneDNN is told to expect (it picks its blocking from it; any count still works).
BATCH_HINT = 16


class PackedLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` in oneDNN's blocked layout (``weight``, not a parameter).

    ``weight`` keeps the logical shape [out, in], dtype and device, so code that asks a layer
    for its dtype or device still gets the answer; its storage is opaque (an mkldnn tensor).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_size=BATCH_HINT)
        self.register_buffer("weight", packed, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


def can_prepack(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when weights of ``dtype`` on ``device`` can be packed here, else why not."""
    if device.type != "cpu":
        return f"the model runs on {device.type}"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return "this torch build has no oneDNN linear ops"
    if dtype == torch.float32:
        return None
    if dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    return f"packing covers float32 (and bfloat16 where the CPU has it natively), not {dtype}"


def _works(dtype: torch.dtype) -> bool:
    """Whether a small packed linear runs and agrees with ``nn.Linear`` (a build without the
    kernels, or a broken one, keeps the plain layers)."""
    probe = nn.Linear(8, 4).to(dtype)
    x = torch.randn(3, 2, 8, dtype=dtype)
    try:
        with torch.no_grad():
            return bool(torch.allclose(PackedLinear(probe)(x).float(), probe(x).float(), atol=1e-2))
    except RuntimeError:
        log.warning("oneDNN's packed linear failed its probe; keeping plain nn.Linear", exc_info=True)
        return False


def prepack_linears(module: nn.Module, kernels: str = "onednn") -> int:
    """Replace every ``nn.Linear`` in ``module`` (loaded, on its device, in its dtype) with a
    ``PackedLinear`` when ``kernels`` is "onednn" and ``can_prepack`` agrees; returns how many.

    A weight shared with another module (an LM head tied to the input embeddings) is packed as
    a copy: the embedding table stays for lookups, so that weight takes twice its memory.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r} must be one of {KERNELS}")
    linears = [(name, m) for name, m in module.named_modules() if name and type(m) is nn.Linear]
    if kernels == "torch" or not linears:
        return 0
    first = linears[0][1].weight
    reason = can_prepack(first.device, first.dtype)
    if reason is None and not _works(first.dtype):
        reason = "the probe failed"
    if reason is not None:
        log.info("linear layers stay nn.Linear: %s", reason)
        return 0
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, PackedLinear(linear))
    return len(linears)


def packed_parameter_count(module: nn.Module) -> int:
    """Elements of the weights and biases ``prepack_linears`` moved out of ``parameters()``."""
    return sum(
        m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        for m in module.modules()
        if isinstance(m, PackedLinear)
    )
