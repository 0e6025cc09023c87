"""LSTM through recc's cell kernels on a GPU: check against the oracle, then time.

    python benchmarks/cell_gpu_check.py              # on a CUDA device, about 2 minutes
    python benchmarks/cell_gpu_check.py --smoke      # tiny shapes on the CPU (Triton interpreter)

1. Lowers specs/lstm.rec with the cell strategy (`recc.lower.cell`), writes the kernels
   into a module file and imports it.
2. Checks outputs, final states and gradients (x, R, initial states) against the float64
   reference at small shapes (fp32, bf16, varlen) on this device.
3. Times with `triton.testing.do_bench` (median), at H=16 heads x D=64, B=16, T=1024:
   recc fwd and fwd+bwd for fp32 (exact, tf32x3 and tf32 dots) and bf16, each with num_warps
   8 and 16 and the param-matrix gradient in registers or by one GEMM after the loop;
   a plain PyTorch loop of the same cell (fp32) fwd and fwd+bwd;
   cuDNN `torch.nn.LSTM(1024, 1024, batch_first=True)` fwd and fwd+bwd, fp32 and bf16.
   Prints a table with ratios (baseline / recc) and writes benchmarks/results/cell_gpu_check.json.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import triton  # noqa: E402

from recc import load_spec  # noqa: E402
from recc.lower.cell import lower_cell  # noqa: E402
from recc.reference import reference  # noqa: E402
from recc.signature import bind  # noqa: E402


def build_module(rec):
    """The lowered source as an importable module (triton.jit needs a real file)."""
    source = "import torch\nimport triton\nimport triton.language as tl\n\n" + lower_cell(rec).source
    folder = Path(tempfile.mkdtemp(prefix="recc_cell_"))
    path = folder / f"cell_{rec.name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"cell_{rec.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_op(module, rec):
    """lstm(x, R, initial_state=None, cu_seqlens=None) -> (y, (h, c)) with autograd, as the module
    template will wrap `_forward` / `_backward`."""
    states = [s.name for s in rec.states]

    class Cell(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, R, cu_seqlens, *init):
            kwargs = dict(cu_seqlens=cu_seqlens, output_final_state=True)
            if init:
                kwargs["initial_state"] = tuple(init)
            call = bind(rec, (x, R), kwargs)
            call.requires_grad = torch.is_grad_enabled() or any(ctx.needs_input_grad)
            outs, finals, saved = module._forward(call)
            ctx.call, ctx.saved, ctx.n_init = call, saved, len(init)
            return (outs["y"],) + tuple(finals[s] for s in states)

        @staticmethod
        def backward(ctx, dy, *dfinals):
            d_in, d_par, d_init = module._backward(ctx.call, ctx.saved, {"y": dy},
                                                   dict(zip(states, dfinals)))
            grads = tuple(d_init[s] for s in states) if ctx.n_init else ()
            return (d_in["x"], d_par["R"], None) + grads

    def op(x, R, initial_state=None, cu_seqlens=None):
        y, *fin = Cell.apply(x, R, cu_seqlens, *(initial_state or ()))
        return y, tuple(fin)
    return op


def load_op(rec):
    """(module, op, how): the generated op through recc.load (a fresh cache, so the current
    lowering is used), or, if the module template cannot host it, the lowered source itself."""
    os.environ["RECC_CACHE_DIR"] = tempfile.mkdtemp(prefix="recc_cache_")
    try:
        import recc
        generated = recc.load(ROOT / "specs" / "lstm.rec", strategy="cell")
        module = generated.module
        assert hasattr(module, "_cell_tuning")

        def op(x, R, initial_state=None, cu_seqlens=None):
            return generated(x, R, initial_state=initial_state, output_final_state=True, cu_seqlens=cu_seqlens)
        return module, op, "recc.load (custom op)"
    except Exception as e:  # noqa: BLE001 - fall back to the bare lowering
        print(f"recc.load failed ({type(e).__name__}: {e}); using the lowered source directly")
        module = build_module(rec)
        return module, make_op(module, rec), "lowered source + local autograd"


@contextlib.contextmanager
def tuned(module, tuning: dict, tf32: bool = False):
    """Run with some of the generated module's `_cell_tuning` knobs (and torch's tf32 switch) set."""
    saved = dict(module._cell_tuning)
    module._cell_tuning.update(tuning)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        module._cell_tuning.clear()
        module._cell_tuning.update(saved)
        torch.backends.cuda.matmul.allow_tf32 = False


def rel_err(got, want) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return (got - want).norm().item() / max(want.norm().item(), 1e-30)


def draw(B, T, H, D, device, dtype, seed=0, n_seq=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, 4, D, generator=g, dtype=torch.float64)
    R = torch.randn(H, 4, D, D, generator=g, dtype=torch.float64) * 0.5 / D ** 0.5
    n = n_seq or B
    init = (torch.randn(n, H, D, generator=g, dtype=torch.float64) * 0.5,
            torch.randn(n, H, D, generator=g, dtype=torch.float64) * 0.5)
    return x.to(device, dtype), R.to(device, dtype), tuple(s.to(device, torch.float32) for s in init)


def check(op, rec, device, *, B, T, H, D, dtype, tol, cu_seqlens=None, with_init=True):
    """Relative errors of outputs, finals and gradients against the float64 oracle on the CPU."""
    n_seq = B if cu_seqlens is None else len(cu_seqlens) - 1
    x, R, init = draw(B, T, H, D, device, dtype, n_seq=n_seq)
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, dtype=torch.int32, device=device)
    init = init if with_init else None
    g = torch.Generator().manual_seed(1)
    # oracle
    rx, rR = x.detach().cpu().double().requires_grad_(), R.detach().cpu().double().requires_grad_()
    rinit = None if init is None else tuple(s.detach().cpu().double().requires_grad_() for s in init)
    y_ref, fin_ref = reference(rec, rx, rR, initial_state=rinit, output_final_state=True,
                               cu_seqlens=None if cu is None else cu.cpu())
    dy = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    dfin = [torch.randn(f.shape, generator=g, dtype=torch.float64) for f in fin_ref]
    loss = (y_ref * dy).sum() + sum((f * d).sum() for f, d in zip(fin_ref, dfin))
    wrt = [rx, rR] + (list(rinit) if rinit else [])
    want = torch.autograd.grad(loss, wrt)
    # kernels
    kx, kR = x.detach().clone().requires_grad_(), R.detach().clone().requires_grad_()
    kinit = None if init is None else tuple(s.detach().clone().requires_grad_() for s in init)
    y, fin = op(kx, kR, initial_state=kinit, cu_seqlens=cu)
    loss = (y.float() * dy.to(device, torch.float32)).sum() + \
        sum((f * d.to(device, torch.float32)).sum() for f, d in zip(fin, dfin))
    got = torch.autograd.grad(loss, [kx, kR] + (list(kinit) if kinit else []))
    errors = {"y": rel_err(y, y_ref), "final h": rel_err(fin[0], fin_ref[0]), "final c": rel_err(fin[1], fin_ref[1])}
    for name, a, b in zip(["dx", "dR", "dh0", "dc0"], got, want):
        errors[name] = rel_err(a, b)
    worst = max(errors.values())
    ok = worst < tol   # NaN never passes
    return ok, worst, errors


def torch_loop(x, R, h, c):
    """The same cell as specs/lstm.rec, a plain PyTorch loop over time (fp32)."""
    ys = []
    for t in range(x.shape[1]):
        z = x[:, t] + torch.einsum("hgij,bhj->bhgi", R, h)
        c = torch.sigmoid(z[:, :, 1]) * c + torch.sigmoid(z[:, :, 0]) * torch.tanh(z[:, :, 2])
        h = torch.sigmoid(z[:, :, 3]) * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys, dim=1), (h, c)


def bench(fn, device, grad_to_none=None, rep=100):
    if device.type != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (Triton interpreter)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "cell_gpu_check.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("cell_gpu_check: needs a CUDA device (or --smoke for the CPU interpreter)")
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rec = load_spec(ROOT / "specs" / "lstm.rec")
    t0 = time.perf_counter()
    module, op, how = load_op(rec)
    print(f"{how}: lowered and imported in {time.perf_counter() - t0:.2f} s; device: "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (interpreter)'}, "
          f"torch {torch.__version__}, triton {triton.__version__}")
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "triton": triton.__version__, "checks": [], "timings": {}}

    # ---- 1. correctness on this device -------------------------------------------------------
    checks = [
        dict(name="fp32 D16 T13 B3 init", B=3, T=13, H=2, D=16, dtype=torch.float32, tol=1e-4),
        dict(name="fp32 D16 T7 B1 fresh", B=1, T=7, H=2, D=16, dtype=torch.float32, tol=1e-4, with_init=False),
        dict(name="fp32 varlen 4-9-2 init", B=1, T=15, H=2, D=16, dtype=torch.float32, tol=1e-4,
             cu_seqlens=[0, 4, 13, 15]),
        dict(name="bf16 D16 T13 B3 init", B=3, T=13, H=2, D=16, dtype=torch.bfloat16, tol=2e-2),
    ]
    if not args.smoke:
        checks += [
            dict(name="fp32 D64 T64 B16 H4 init", B=16, T=64, H=4, D=64, dtype=torch.float32, tol=1e-4),
            dict(name="bf16 D64 T64 B16 H4 init", B=16, T=64, H=4, D=64, dtype=torch.bfloat16, tol=2e-2),
            dict(name="fp32 D64 B70 (2 row tiles)", B=70, T=9, H=2, D=64, dtype=torch.float32, tol=1e-4),
        ]
    all_ok = True
    for c in checks:
        name = c.pop("name")
        t0 = time.perf_counter()
        ok, worst, errors = check(op, rec, device, **c)
        all_ok &= ok
        print(f"check {name:32s} {'ok  ' if ok else 'FAIL'} worst rel err {worst:.2e}  "
              f"({time.perf_counter() - t0:.1f} s)  " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
        result["checks"].append(dict(name=name, ok=ok, worst=worst, errors=errors))
    # the other kernel variants timed below, once each at a small shape (DESIGN: tf32 dots ~1e-3)
    if device.type == "cuda":
        for name, tuning, tf32, tol in [("fp32 tf32 dots", {}, True, 5e-3),
                                        ("fp32 tf32x3 dots", {"fp32_dots": "tf32x3"}, False, 1e-4),
                                        ("fp32 dW by GEMM", {"dw": "gemm"}, False, 1e-4),
                                        ("fp32 dW in registers", {"dw": "registers"}, False, 1e-4),
                                        ("fp32 recompute products", {"save_dots": False}, False, 1e-4)]:
            with tuned(module, tuning, tf32):
                ok, worst, errors = check(op, rec, device, B=16, T=13, H=2, D=64, dtype=torch.float32, tol=tol)
            all_ok &= ok
            print(f"check {name:32s} {'ok  ' if ok else 'FAIL'} worst rel err {worst:.2e}")
            result["checks"].append(dict(name=name, ok=ok, worst=worst, errors=errors))

    # ---- 2. timing ----------------------------------------------------------------------------
    B, T, H, D = (16, 1024, 16, 64) if not args.smoke else (2, 4, 2, 16)
    print(f"\ntiming at B={B} T={T} H={H} D={D} (hidden {H * D}); median ms of do_bench")
    x32, R32, _ = draw(B, T, H, D, device, torch.float32, seed=3)
    dy32 = torch.randn(B, T, H, D, device=device)
    times = {}

    def time_recc(label, dtype, tf32, tuning, backward=True):
        x = x32.to(dtype).requires_grad_()
        R = R32.to(dtype).requires_grad_()
        dy = dy32.to(dtype)

        def fwd_bwd():
            y, _ = op(x, R)
            y.backward(dy)
        with tuned(module, tuning, tf32):
            t0 = time.perf_counter()
            fwd_bwd() if backward else op(x, R)
            if device.type == "cuda":
                torch.cuda.synchronize()
            cold = (time.perf_counter() - t0) * 1e3
            with torch.no_grad():
                fwd = bench(lambda: op(x, R), device)
            both = bench(fwd_bwd, device, grad_to_none=[x, R]) if backward else float("nan")
        times[label] = dict(fwd=fwd, fwd_bwd=both, first_call_ms=cold, tuning=tuning, tf32=tf32,
                            dtype=str(dtype))
        print(f"  {label:36s} fwd {fwd:9.3f}  fwd+bwd {both:9.3f}  (first call, compile included: {cold:6.0f} ms)")

    families = [("recc fp32", torch.float32, False, {}, (8, 16)),
                ("recc fp32 tf32x3-dots", torch.float32, False, {"fp32_dots": "tf32x3"}, (8,)),
                ("recc fp32 tf32-dots", torch.float32, True, {}, (8,)),
                ("recc bf16", torch.bfloat16, False, {}, (8, 16))]
    for family, dtype, tf32, base, warps in families:
        for w in (warps if not args.smoke else (4,)):
            for dw in ("registers", "gemm"):
                time_recc(f"{family} w{w} dW-{dw}", dtype, tf32, {**base, "num_warps": w, "dw": dw})

    # a plain PyTorch loop of the same cell, fp32
    h0 = torch.zeros(B, H, D, device=device)
    c0 = torch.zeros(B, H, D, device=device)
    xl, Rl = x32.clone().requires_grad_(), R32.clone().requires_grad_()
    with torch.no_grad():
        y_loop, _ = torch_loop(xl, Rl, h0, c0)
        y_recc, _ = op(x32, R32)
    print(f"  (recc vs PyTorch loop, fp32: rel err {rel_err(y_recc, y_loop):.1e})")
    with torch.no_grad():
        fwd = bench(lambda: torch_loop(xl, Rl, h0, c0), device, rep=200)

    def loop_fwd_bwd():
        y, _ = torch_loop(xl, Rl, h0, c0)
        y.backward(dy32)
    both = bench(loop_fwd_bwd, device, grad_to_none=[xl, Rl], rep=200)
    times["PyTorch loop fp32"] = dict(fwd=fwd, fwd_bwd=both)
    print(f"  {'PyTorch loop fp32':28s} fwd {fwd:9.3f}  fwd+bwd {both:9.3f}")

    # cuDNN LSTM at the same hidden size (it also does the input projection W x)
    hidden = H * D
    for label, dtype in [("cuDNN LSTM fp32", torch.float32), ("cuDNN LSTM bf16", torch.bfloat16)]:
        if args.smoke and dtype == torch.bfloat16:
            continue
        lstm = torch.nn.LSTM(hidden, hidden, batch_first=True).to(device=device, dtype=dtype)
        inp = torch.randn(B, T, hidden, device=device, dtype=dtype, requires_grad=True)
        dout = torch.randn(B, T, hidden, device=device, dtype=dtype)
        with torch.no_grad():
            fwd = bench(lambda: lstm(inp), device)

        def cudnn_fwd_bwd():
            out, _ = lstm(inp)
            out.backward(dout)
        both = bench(cudnn_fwd_bwd, device, grad_to_none=[inp] + list(lstm.parameters()))
        times[label] = dict(fwd=fwd, fwd_bwd=both)
        print(f"  {label:28s} fwd {fwd:9.3f}  fwd+bwd {both:9.3f}")

    # ---- 3. table -----------------------------------------------------------------------------
    best = {}
    for family, *_ in families:
        keys = [k for k in times if k.startswith(family + " w")]
        best[family] = (min(keys, key=lambda k: times[k]["fwd"]), min(keys, key=lambda k: times[k]["fwd_bwd"]))
    loop = times["PyTorch loop fp32"]
    cudnn = times["cuDNN LSTM fp32"]
    print(f"\n{'':44s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'loop/x fwd':>11s} {'loop/x f+b':>11s} "
          f"{'cuDNN32/x fwd':>14s} {'cuDNN32/x f+b':>14s}")
    rows = [(f"{fam} (best: {kf[len(fam) + 1:].split()[0]} / {kb[len(fam) + 1:]})",
             times[kf]["fwd"], times[kb]["fwd_bwd"]) for fam, (kf, kb) in best.items()]
    rows += [(k, v["fwd"], v["fwd_bwd"]) for k, v in times.items() if not k.startswith("recc")]
    for name, f, fb in rows:
        print(f"{name:44s} {f:9.3f} {fb:11.3f} {loop['fwd'] / f:11.1f} {loop['fwd_bwd'] / fb:11.1f} "
              f"{cudnn['fwd'] / f:14.2f} {cudnn['fwd_bwd'] / fb:14.2f}")
    result["timings"] = times
    result["shape"] = dict(B=B, T=T, H=H, D=D)
    result["best"] = {k: dict(fwd=v[0], fwd_bwd=v[1]) for k, v in best.items()}
    result["checks_ok"] = all_ok
    if not args.smoke:
        target = best.get("recc fp32")
        if target:
            sf, sb = loop["fwd"] / times[target[0]]["fwd"], loop["fwd_bwd"] / times[target[1]]["fwd_bwd"]
            print(f"\nfp32 speedup over the PyTorch loop: fwd {sf:.1f}x, fwd+bwd {sb:.1f}x "
                  f"(target >= 50x: {'met' if min(sf, sb) >= 50 else 'NOT met'})")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    print(f"checks {'all ok' if all_ok else 'FAILED'}; total {time.perf_counter() - start:.0f} s")
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
