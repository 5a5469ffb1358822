"""Linear layers prepacked for oneDNN compute what ``nn.Linear`` computes, wherever they apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tandem.models.packed_linear import (
    FusedMember,
    PackedLinear,
    can_prepack,
    packed_parameter_count,
    prepack_linears,
)

pytestmark = pytest.mark.skipif(
    can_prepack(torch.device("cpu"), torch.float32) is not None, reason="no oneDNN linear ops in this torch"
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(24, 40)
        self.down = nn.Linear(40, 24, bias=False)
        self.norm = nn.LayerNorm(24)
        self.inner = nn.Sequential(nn.Linear(24, 24), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.inner(self.down(torch.relu(self.up(x)))))


@pytest.mark.parametrize("rows", [1, 3, 16, 65])
def test_a_packed_model_computes_what_the_plain_one_does(rows: int) -> None:
    torch.manual_seed(0)
    plain = Block().eval()
    packed = Block().eval()
    packed.load_state_dict(plain.state_dict())
    assert prepack_linears(packed) == 3
    assert all(type(m) is not nn.Linear for m in packed.modules())
    x = torch.randn(2, rows, 24)  # 3-D like a decoder's [batch, positions, hidden]
    with torch.no_grad():
        torch.testing.assert_close(packed(x), plain(x), atol=1e-5, rtol=1e-5)


def test_parameters_moved_into_packed_weights_are_still_counted() -> None:
    block = Block()
    before = sum(p.numel() for p in block.parameters())
    prepack_linears(block)
    assert sum(p.numel() for p in block.parameters()) + packed_parameter_count(block) == before


def test_a_packed_layer_still_answers_dtype_device_and_shape() -> None:
    layer = PackedLinear(nn.Linear(8, 5))
    assert (layer.weight.dtype, layer.weight.device.type, tuple(layer.weight.shape)) == (
        torch.float32,
        "cpu",
        (5, 8),
    )


def test_torch_kernels_and_other_dtypes_keep_nn_linear() -> None:
    assert prepack_linears(Block(), kernels="torch") == 0
    assert prepack_linears(Block().half()) == 0  # float16 is not packed
    assert can_prepack(torch.device("meta"), torch.float32) == "the model runs on meta"
    with pytest.raises(ValueError, match="kernels"):
        prepack_linears(Block(), kernels="mkl")


class Attention(nn.Module):
    """Siblings as HF decoders name them: q/k/v (with biases, as Qwen2) and a gated MLP's gate/up."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(24, 32), nn.Linear(24, 8), nn.Linear(24, 8)
        self.gate_proj, self.up_proj = nn.Linear(24, 40, bias=False), nn.Linear(24, 40, bias=False)


def test_sibling_projections_share_one_matrix_and_answer_as_before() -> None:
    torch.manual_seed(0)
    plain = Attention().eval()
    fused = Attention().eval()
    fused.load_state_dict(plain.state_dict())
    before = sum(p.numel() for p in fused.parameters())
    assert prepack_linears(fused) == 5
    assert all(isinstance(getattr(fused, n), FusedMember) for n in ("q_proj", "k_proj", "v_proj", "up_proj"))
    assert packed_parameter_count(fused) == before
    assert tuple(fused.k_proj.weight.shape) == (8, 24)
    x, y = torch.randn(2, 3, 24), torch.randn(2, 1, 24)
    names = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    with torch.no_grad():
        expected = {n: getattr(plain, n)(x) for n in names}
        # in order on one input (what a decoder layer does), out of order, twice, interleaved with
        # another input: every call answers its own input
        for order in (names, names[::-1], ("k_proj", "k_proj", "q_proj", "v_proj")):
            for n in order:
                torch.testing.assert_close(getattr(fused, n)(x), expected[n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.q_proj(x), expected["q_proj"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.k_proj(y), plain.k_proj(y), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fused.v_proj(x), expected["v_proj"], atol=1e-5, rtol=1e-5)


def test_fused_outputs_equal_the_separately_packed_layers_bit_for_bit() -> None:
    torch.manual_seed(1)
    module = Attention().eval()
    separate = {n: PackedLinear(getattr(module, n)) for n in ("q_proj", "k_proj", "v_proj")}
    prepack_linears(module)
    x = torch.randn(1, 1, 24)
    with torch.no_grad():
        for name, layer in separate.items():
            assert torch.equal(getattr(module, name)(x), layer(x))


def test_a_fused_group_keeps_no_activation_once_every_part_is_taken() -> None:
    module = Attention().eval()
    prepack_linears(module)
    group = module.q_proj._member.group
    with torch.no_grad():
        x = torch.randn(1, 1, 24)
        module.q_proj(x), module.k_proj(x)
        assert group._outputs.source is x
        module.v_proj(x)
    assert group._outputs.source is None and group._outputs.parts is None


def test_siblings_that_differ_stay_separate() -> None:
    module = Attention()
    module.v_proj = nn.Linear(24, 8, bias=False)  # the others have biases
    prepack_linears(module)
    assert all(type(getattr(module, n)) is PackedLinear for n in ("q_proj", "k_proj", "v_proj"))
    assert prepack_linears(Attention(), fuse=False) == 5
