import sys, time, torch
from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk as f
B, H, T, K = 4, 16, int(sys.argv[1]), 128
kw = {} if len(sys.argv) < 3 else dict(chunk_size=int(sys.argv[2]))
d = dict(device="cuda", dtype=torch.bfloat16)
q, k, v = [torch.randn(B, H, T, K, **d, requires_grad=True) for _ in range(3)]
i, fg = [torch.randn(B, H, T, **d, requires_grad=True) for _ in range(2)]
t0 = time.time(); y = f(q, k, v, i, fg, **kw); torch.cuda.synchronize(); print("fwd ok", time.time() - t0, flush=True)
y.float().sum().backward(); torch.cuda.synchronize(); print("bwd ok", time.time() - t0, flush=True)
import triton.testing as tt
print("fwd ms", tt.do_bench(lambda: f(q, k, v, i, fg, **kw)))
