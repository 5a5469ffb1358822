"""Linear layers prepacked for oneDNN compute what ``nn.Linear`` computes, wherever they apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tandem.models.packed_linear import PackedLinear, can_prepack, packed_parameter_count, prepack_linears

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
