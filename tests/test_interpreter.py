"""The test harness's interpreter behaves as compiled Triton where the tests rely on it (conftest.py)."""
import torch
import triton
import triton.language as tl


@triton.jit
def _to_bf16(x, y, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(y + o, tl.load(x + o).to(tl.bfloat16))


@triton.jit
def _store_as_bf16(x, y, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(y + o, tl.load(x + o) * 1.0)     # an fp32 value stored through a bf16 pointer


def test_fp32_to_bf16_rounds_to_nearest_even_as_a_gpu():
    x = torch.cat([torch.randn(4000), torch.tensor([0., -0., 1e-40, -1e-40, 3.4e38, -3.4e38, float("inf"),
                                                    float("-inf"), 1 + 2 ** -8, 1 + 3 * 2 ** -8])])
    x = torch.cat([x, torch.zeros(4096 - len(x))])
    for kernel in (_to_bf16, _store_as_bf16):
        y = torch.empty(4096, dtype=torch.bfloat16)
        kernel[(1,)](x, y, N=4096)
        assert torch.equal(y.view(torch.int16), x.to(torch.bfloat16).view(torch.int16)), kernel.__name__
    z = torch.empty(4096, dtype=torch.bfloat16)
    _to_bf16[(1,)](torch.full((4096,), float("nan")), z, N=4096)
    assert torch.isnan(z).all()
