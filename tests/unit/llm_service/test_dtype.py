"""The language model's compute dtype: half precision only where the hardware does it natively."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llm_service.loader import cpu_has_native_bf16, resolve_dtype

pytestmark = pytest.mark.unit

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_bf16_flags_are_read_from_cpuinfo() -> None:
    assert not cpu_has_native_bf16(AVX2)
    assert cpu_has_native_bf16(SAPPHIRE)
    assert cpu_has_native_bf16(GRAVITON)
    assert cpu_has_native_bf16("")  # nothing to tell by: keep the checkpoint's dtype


@pytest.mark.parametrize(
    ("declared", "device", "native", "expected"),
    [
        ("bfloat16", CPU, False, torch.float32),  # emulated bf16 is 2-4x slower than float32
        ("bfloat16", CPU, True, torch.bfloat16),
        ("bfloat16", CUDA, False, torch.bfloat16),
        ("float16", CPU, True, torch.float32),
        ("float16", CUDA, True, torch.float16),
        ("float32", CPU, False, torch.float32),
        (None, CPU, False, torch.float32),
    ],
)
def test_auto_dtype(declared: str | None, device: torch.device, native: bool, expected: torch.dtype) -> None:
    config = SimpleNamespace(dtype=declared)
    assert resolve_dtype("auto", config, device, native_bf16=native) == expected


def test_an_explicit_dtype_is_kept() -> None:
    config = SimpleNamespace(dtype="float32")
    assert resolve_dtype("bfloat16", config, CPU, native_bf16=False) == torch.bfloat16
