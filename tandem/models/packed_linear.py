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

Sibling projections that read the same input (an attention's ``q_proj``/``k_proj``/``v_proj``, a
gated MLP's ``gate_proj``/``up_proj``) are packed as one matrix (``FusedProjection``): one call
instead of three or two. In a small model's decode step each call costs more in dispatch and
thread hand-off than in weight reads: on the 2-core machine, SmolLM2-135M's q/k/v at one row took
228-282 us as three calls and 95-117 us as one; gate/up 216-282 us against 161-169 us. The
outputs are bitwise those of the separate packed layers (each output column is the same dot
product).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

KERNELS = ("onednn", "torch")
# The row count oneDNN is told to expect (it picks its blocking from it; any count still works).
BATCH_HINT = 16
# Children of one module that HF decoders and encoders call on the same input, in this order.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


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


class _Outputs(threading.local):
    """The last input a fused projection saw in this thread, and its parts not yet handed out."""

    source: torch.Tensor | None = None
    parts: list[torch.Tensor | None] | None = None


class FusedProjection:
    """One packed matrix holding sibling linears' weights stacked by output rows.

    The first member called with an input computes every member's output at once; the others,
    called with the same tensor object, take their part. A member called with another input (a
    cross-attention's keys, a module that calls them in another order or twice) computes the
    whole projection again for it, so the answer is always right, only the saving is lost. A part
    is forgotten once it is handed out, and the input when every part has been, so no activation
    outlives the layer. State is per thread (the vision service may encode from several). The
    one thing it cannot see is an input changed in place between two siblings' calls; no
    transformers module does that between its projections.
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        weight = torch.cat([linear.weight.detach() for linear in linears])
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch_size=BATCH_HINT)
        biases = [linear.bias for linear in linears]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases if b is not None])
        self.sizes = [linear.out_features for linear in linears]
        self._outputs = _Outputs()

    def part(self, index: int, x: torch.Tensor) -> torch.Tensor:
        state = self._outputs
        if state.source is not x or state.parts is None or state.parts[index] is None:
            out = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
            state.source, state.parts = x, list(out.split(self.sizes, dim=-1))
        parts = state.parts
        assert parts is not None
        result, parts[index] = parts[index], None
        if all(p is None for p in parts):
            state.source = state.parts = None
        assert result is not None
        return result


@dataclass(eq=False)
class _Member:
    group: FusedProjection
    index: int


class FusedMember(nn.Module):
    """One sibling of a ``FusedProjection``: ``y = x @ W_i.T + b_i``, computed with its siblings."""

    def __init__(self, linear: nn.Linear, group: FusedProjection, index: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.has_bias = linear.bias is not None
        self._member = _Member(group, index)  # not a submodule: the group is shared
        # The logical weight's dtype, device and shape for code that asks; one element of storage.
        logical = linear.weight.detach().new_zeros(()).expand(linear.out_features, linear.in_features)
        self.register_buffer("weight", logical, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._member.group.part(self._member.index, x)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, "
            f"fused part {self._member.index}"
        )


def _sibling_groups(module: nn.Module) -> list[tuple[nn.Module, tuple[str, ...]]]:
    """(parent, names) for every complete group of ``SIBLINGS`` that can share one matrix: plain
    ``nn.Linear`` children with one input width, dtype and device, all with a bias or none."""
    found: list[tuple[nn.Module, tuple[str, ...]]] = []
    for parent in module.modules():
        for names in SIBLINGS:
            linears = [getattr(parent, name, None) for name in names]
            if not all(type(linear) is nn.Linear for linear in linears):
                continue
            first = linears[0]
            assert isinstance(first, nn.Linear)
            if all(
                isinstance(linear, nn.Linear)
                and linear.in_features == first.in_features
                and linear.weight.dtype == first.weight.dtype
                and linear.weight.device == first.weight.device
                and (linear.bias is None) == (first.bias is None)
                for linear in linears
            ):
                found.append((parent, names))
    return found


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


def prepack_linears(module: nn.Module, kernels: str = "onednn", fuse: bool = True) -> int:
    """Replace every ``nn.Linear`` in ``module`` (loaded, on its device, in its dtype) with a
    ``PackedLinear`` when ``kernels`` is "onednn" and ``can_prepack`` agrees; returns how many.
    With ``fuse``, groups of ``SIBLINGS`` become ``FusedMember``s of one ``FusedProjection``.

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
    if fuse:
        for parent, names in _sibling_groups(module):
            members = [getattr(parent, name) for name in names]
            group = FusedProjection(members)
            for index, (name, linear) in enumerate(zip(names, members, strict=True)):
                setattr(parent, name, FusedMember(linear, group, index))
        linears = [(name, m) for name, m in linears if type(module.get_submodule(name)) is nn.Linear]
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, PackedLinear(linear))
    return len(linears) + sum(1 for m in module.modules() if isinstance(m, FusedMember))


def packed_parameter_count(module: nn.Module) -> int:
    """Elements of the weights and biases ``prepack_linears`` moved out of ``parameters()``."""
    return sum(
        m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
        for m in module.modules()
        if isinstance(m, PackedLinear)
    ) + sum(
        m.in_features * m.out_features + (m.out_features if m.has_bias else 0)
        for m in module.modules()
        if isinstance(m, FusedMember)
    )
