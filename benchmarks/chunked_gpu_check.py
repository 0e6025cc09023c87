"""The `chunked` strategy on a CUDA GPU: correctness against the float64 reference, then timings
against the anchors (fla, mlstm_kernels) on the same inputs.

    python benchmarks/chunked_gpu_check.py                               # checks + main shape (~5 min cold)
    python benchmarks/chunked_gpu_check.py --no-check --T 1024,8192,32768 # the T sweep
    python benchmarks/chunked_gpu_check.py --tune --families gla         # tile search, one family at a time
    python benchmarks/chunked_gpu_check.py --smoke                       # CPU interpreter: tests this script
    python benchmarks/chunked_gpu_check.py --no-anchor --T 4096 --dtype fp32   # the checks on fp32 inputs

1. check: each family's lowered kernels (chunk 64) on bf16 inputs at a small ragged shape
   (B=2, T=300, H=2, K=V=128, with an initial state) and a varlen batch; outputs, final states
   and all gradients against `recc.reference` in float64 on the CPU; rel err < 2e-2.
2. time: B=4, H=16, K=V=128, bf16, T in --T; `triton.testing.do_bench` median of the forward and
   of forward+backward, recc (`_forward` / `_backward` of the lowered source on a bound call)
   and the anchor where importable; ratio = anchor_ms / recc_ms (> 1: recc is faster).
Prints a compact table last and writes JSON to $OUT (if set) or benchmarks/results/.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import recc  # noqa: E402
from recc.lower.chunked import chunked_form, lower_chunked  # noqa: E402
from recc.primitives import sample_input  # noqa: E402
from recc.reference import reference  # noqa: E402
from recc.signature import bind  # noqa: E402

DEVICE = "cuda"
FAMILIES = ["simple_gla", "gla", "delta_net", "gated_delta_net", "delta_product", "mlstm", "retnet", "mamba2"]
DIM = 128
CHECK_SHAPE = dict(B=2, T=300, H=2, cu=[0, 37, 200, 300])


def module_of(rec, tiles: dict | None = None):
    """`rec`'s lowered chunked module (tile overrides `tiles`), imported from a file named by its
    source's hash in one temporary folder (written once, atomically: several processes may ask)."""
    source = lower_chunked(rec, tiles=tiles).source
    folder = Path(tempfile.gettempdir()) / "recc_chunked"
    folder.mkdir(exist_ok=True)
    path = folder / f"{rec.name}_{hashlib.sha1(source.encode()).hexdigest()[:10]}.py"
    if not path.exists():
        part = path.with_suffix(f".{os.getpid()}.part")
        part.write_text(source)
        os.replace(part, path)
    mspec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module


class _Recorded:
    """Stands in for a kernel of a generated module: records its launches instead of running them."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        return lambda *a, **kw: self.calls.append((self.name, grid, a, kw))


def record_launches(rec, module, shape: dict, dtype=torch.bfloat16):
    """A forward + backward of `module` at `shape` (B, T, H, K, V; zero initial states, cotangents and
    final-state cotangents) with every kernel stubbed, on the CPU: (the real kernels by global name,
    their launches [(global, grid, args, kwargs)], the launch tiles the host code chose). The tensors
    hold whatever the stubs left: only the launches' addresses and parameters mean anything."""
    calls, real = [], {}
    for n in [n for n in vars(module) if n.endswith("_kernel")]:
        real[n] = getattr(module, n)
        setattr(module, n, _Recorded(n, calls))
    gen = torch.Generator().manual_seed(0)
    B, T, H = shape["B"], shape["T"], shape["H"]
    form = chunked_form(rec)
    dims = {form.K: shape["K"], form.V: shape["V"]} | rec.fixed_dims
    size = lambda s: tuple(dims.get(x, x) for x in s)
    args = [sample_input((B, T, H) + size(d.shape), d.annotations, gen, torch.float32).to(dtype) for d in rec.inputs]
    args += [sample_input((H,) + size(d.shape), d.annotations, gen, torch.float32).to(dtype) for d in rec.params]
    init = tuple(torch.zeros((B, H) + size(s.shape)) for s in rec.states)
    call = bind(rec, tuple(args), dict(output_final_state=True, initial_state=init[0] if len(init) == 1 else init))
    call.requires_grad = True
    outputs, finals, saved = module._forward(call)
    do = torch.zeros((B, T, H) + size(rec.outputs[0].shape), dtype=dtype)
    module._backward(call, saved, {rec.outputs[0].name: do}, {s.name: torch.zeros((B, H) + size(s.shape))
                                                              for s in rec.states})
    return real, calls, dict(call.memo["launch"])


def load_module(spec: str, tiles: dict | None):
    rec = recc.load_spec(ROOT / "specs" / f"{spec}.rec")
    return rec, module_of(rec, tiles)


# Mamba2's usual initialisation (A in [1, 16], softplus(dt_bias) in [1e-3, 0.1]): randn draws give
# per-step log-decays near -20, where the decay gradients are sums of large cancelling terms
REALISTIC = {
    "A_log": lambda shape, gen: torch.log(1 + 15 * torch.rand(shape, generator=gen)),
    "dt_bias": lambda shape, gen: torch.log(torch.expm1(10 ** (-3 + 2 * torch.rand(shape, generator=gen)))),
    "dt": lambda shape, gen: 0.5 * torch.randn(shape, generator=gen),
}


def make_inputs(rec, B, T, H, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dims = {d: DIM for d in rec.free_dims} | rec.fixed_dims
    size = lambda shape: tuple(dims.get(x, x) for x in shape)
    draw = lambda d, shape: (REALISTIC[d.name](shape, gen) if rec.name == "mamba2" and d.name in REALISTIC
                             else sample_input(shape, d.annotations, gen, torch.float32))
    args = [draw(d, (B, T, H) + size(d.shape)) for d in rec.inputs]
    args += [draw(d, (H,) + size(d.shape)) for d in rec.params]
    return [a.to(device=device, dtype=dtype) for a in args], dims


def rel_err(got, ref):
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    e = ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    return float("inf") if e != e else e


def errors_against(rec, got, ref, final_prefix: str = "") -> dict:
    """Relative errors of a module's results against the float64 reference's, by name: the output,
    each final state (final_prefix + its name), each input's and param's gradient (d<name>), each
    initial state's (d<name>0). got: (outputs, finals, d_in, d_par, d_init) of _forward/_backward;
    ref: (o_ref, s_ref (a tuple), leaves, init_leaves) after the reference's backward."""
    outputs, finals, d_in, d_par, d_init = got
    o_ref, s_ref, leaves, init_leaves = ref
    errs = {"o": rel_err(outputs[rec.outputs[0].name], o_ref)}
    errs |= {final_prefix + s.name: rel_err(finals[s.name], r) for s, r in zip(rec.states, s_ref)}
    for d, leaf in zip(rec.inputs + rec.params, leaves):
        g = (d_in if d in rec.inputs else d_par)[d.name]
        errs["d" + d.name] = rel_err(g if g is not None else torch.zeros_like(leaf), leaf.grad)
    errs |= {f"d{s.name}0": rel_err(d_init[s.name], t.grad) for s, t in zip(rec.states, init_leaves)}
    return errs


# ---- 1. correctness ---------------------------------------------------------------

def check(spec, rec, module, varlen: bool, dtype=torch.bfloat16):
    """Outputs, final states and every gradient against float64: relative error under 2e-2 for 16-bit
    inputs, under 1e-3 for fp32 (tl.dot's tf32x3 or tf32 as torch.backends.cuda.matmul.allow_tf32 says)."""
    tol = 1e-3 if dtype == torch.float32 else 2e-2
    T, H = CHECK_SHAPE["T"], CHECK_SHAPE["H"]
    B = 1 if varlen else CHECK_SHAPE["B"]
    args, dims = make_inputs(rec, B, T, H, dtype, DEVICE, seed=1)
    cu = torch.tensor(CHECK_SHAPE["cu"], device=DEVICE) if varlen else None
    N = 3 if varlen else B
    gen = torch.Generator().manual_seed(2)
    init = tuple(torch.randn((N, H) + tuple(dims.get(x, x) for x in s.shape), generator=gen) for s in rec.states)
    pack = lambda st: st[0] if len(st) == 1 else st
    kw = {"output_final_state": True, **({"cu_seqlens": cu} if varlen else {})}

    leaves = [a.detach().double().cpu().requires_grad_() for a in args]
    init_leaves = tuple(t.double().requires_grad_() for t in init)
    ref_kw = dict(kw, initial_state=pack(init_leaves), **({"cu_seqlens": cu.cpu()} if varlen else {}))
    o_ref, s_ref = reference(rec, *leaves, **ref_kw)
    s_ref = s_ref if isinstance(s_ref, tuple) else (s_ref,)
    do = torch.randn(o_ref.shape, generator=gen, dtype=torch.float64)
    ds = tuple(torch.randn(s.shape, generator=gen, dtype=torch.float64) for s in s_ref)
    ((o_ref * do).sum() + sum((s * d).sum() for s, d in zip(s_ref, ds))).backward()

    call = bind(rec, tuple(args), dict(kw, initial_state=pack(tuple(t.to(DEVICE) for t in init))))
    call.requires_grad = True   # a backward follows (the op sets this)
    outputs, finals, saved = module._forward(call)
    out = rec.outputs[0].name
    d_in, d_par, d_init = module._backward(call, saved, {out: do.to(DEVICE, dtype)},
                                           {s.name: d.float().to(DEVICE) for s, d in zip(rec.states, ds)})
    errs = errors_against(rec, (outputs, finals, d_in, d_par, d_init), (o_ref, s_ref, leaves, init_leaves))
    # a call that needs no gradient: its own plan and kernels (chunk_fwd_ho)
    call = bind(rec, tuple(args), dict(kw, initial_state=pack(tuple(t.to(DEVICE) for t in init))))
    outputs, finals, _ = module._forward(call)
    errs["o_nograd"] = rel_err(outputs[out], o_ref)
    errs |= {f"{s.name}_nograd": rel_err(finals[s.name], r) for s, r in zip(rec.states, s_ref)}
    worst = max(errs, key=errs.get)
    ok = errs[worst] < tol
    print(f"check {spec:16s} {'varlen' if varlen else 'batch ':6s} {str(dtype)[6:]:8s} {'PASS' if ok else 'FAIL'}  worst {worst} "
          f"{errs[worst]:.2e}  " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)
    return ok, errs


# ---- 2. timing ----------------------------------------------------------------------

def recc_fns(rec, module, args):
    out = rec.outputs[0].name

    def fwd():
        return module._forward(bind(rec, tuple(args), {}))

    do = None

    def fwd_bwd():
        nonlocal do
        call = bind(rec, tuple(args), {})
        call.requires_grad = True   # a backward follows (the op sets this)
        outputs, finals, saved = module._forward(call)
        if do is None:
            do = torch.randn_like(outputs[out])
        module._backward(call, saved, {out: do}, {})
    return fwd, fwd_bwd


def anchor_fns(spec, rec, args):
    """(fwd, fwd_bwd) of the anchor on the same inputs, or None when it is not importable."""
    x = dict(zip([d.name for d in rec.inputs + rec.params], args))
    try:
        if spec == "mlstm":
            from mlstm_kernels.torch.chunkwise.triton_xl_chunk import mlstm_chunkwise__xl_chunk as op
            t = lambda a: a.transpose(1, 2).contiguous()
            ins = [t(x["q"]), t(x["k"]), t(x["v"]), t(x["i"]), t(x["f"])]
            from bench import MLSTM_XL_CHUNK_OPTIONS     # 4 warps do not compile on Triton 3.6 (bench.py)
            call = lambda *a: op(*a, **MLSTM_XL_CHUNK_OPTIONS)
        else:
            import fla.ops.common.chunk_o as chunk_o
            chunk_o.TRITON_ABOVE_3_7_1 = True  # timing only: fla refuses its gated backward on Triton 3.6
            if spec == "simple_gla":
                from fla.ops.simple_gla import chunk_simple_gla
                ins = [x["q"], x["k"], x["v"], x["g"]]
                call = lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g)[0]
            elif spec == "gla":
                from fla.ops.gla import chunk_gla
                ins = [x["q"], x["k"], x["v"], x["g"]]
                call = lambda q, k, v, g: chunk_gla(q, k, v, g=g)[0]
            elif spec == "delta_net":
                from fla.ops.delta_rule import chunk_delta_rule
                ins = [x["q"], x["k"], x["v"], x["beta"]]
                call = lambda q, k, v, b: chunk_delta_rule(q, k, v, b)[0]
            elif spec == "gated_delta_net":
                from fla.ops.gated_delta_rule import chunk_gated_delta_rule
                ins = [x["q"], x["k"], x["v"], x["g"], x["beta"]]
                call = lambda q, k, v, g, b: chunk_gated_delta_rule(q, k, v, g, b)[0]
            elif spec == "delta_product":
                from fla.ops.gated_delta_product import chunk_gated_delta_product
                B, T, H = x["q"].shape[:3]
                flat = lambda a: a.transpose(2, 3).reshape(B, 2 * T, H, *a.shape[4:]).contiguous()
                ins = [x["q"], flat(x["k"]), flat(x["v"]), x["g"], flat(x["beta"])]
                call = lambda q, k, v, g, b: chunk_gated_delta_product(q, k, v, g, b, num_householder=2)[0]
            else:
                return None
    except Exception as e:  # the anchor is optional
        print(f"anchor for {spec} unavailable: {type(e).__name__}: {e}", flush=True)
        return None
    grads = [a.detach().clone().requires_grad_() for a in ins]
    do = None

    def fwd():
        with torch.no_grad():
            return call(*ins)

    def fwd_bwd():
        nonlocal do
        o = call(*grads)
        if do is None:
            do = torch.randn_like(o)
        o.backward(do)
    return fwd, fwd_bwd


def tune(spec, B, T, H, rep, base: dict):
    """Coordinate descent over the tiles at one shape, from the solver's choice (`recc.tiles`)
    with `base` (--tiles) on top: each kernel's (BV, num_warps, num_stages) (or (num_warps,
    num_stages) without a V block), then BKS, BT and, where the spec has them, BI (householder) and
    BC (per-key decays); keeps a change when fwd+bwd gets faster. Prints and returns the best tiles
    (the host code's names: BT, BKS, <kernel>_BV, ...; pass them back with --tiles)."""
    from recc.lower.chunked import KERNELS, NO_V_BLOCK, chunked_overrides
    from recc.tiles import launch_tiles
    rec0, module0 = load_module(spec, None)
    args, _ = make_inputs(rec0, B, T, H, torch.bfloat16, DEVICE)
    cache = {}

    def measure(tiles):
        key = repr(sorted(tiles.items()))
        if key not in cache:
            try:
                rec, module = load_module(spec, tiles)
                fwd, fwd_bwd = recc_fns(rec, module, args)
                fwd_bwd()
                cache[key] = (bench(fwd_bwd, rep), bench(fwd, rep))
            except Exception as e:
                print(f"  tune {spec}: {tiles} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
                cache[key] = (float("inf"), float("inf"))
        return cache[key]

    solver = launch_tiles("chunked", dict(B=B, T=T, H=H, K=DIM, V=DIM), torch.device(DEVICE), **module0._LAUNCH_SHAPE)
    best = {**solver, **chunked_overrides(base)}
    best_ms = measure(best)
    print(f"tune {spec}: start (solver {solver}) fwd+bwd {best_ms[0]:.3f} fwd {best_ms[1]:.3f} ms", flush=True)
    options = {k: [(bv, w, st) for bv in (32, 64, 128) for w in (4, 8) for st in (1, 2, 3)] for k in KERNELS}
    options["h"] = options["dh"] = [(bv, w, st) for bv in (16, 32, 64) for w in (4, 8) for st in (1, 2)]
    options["wy"] = options["wyb"] = [(bv, w, st) for bv in (16, 32, 64, 128) for w in (2, 4, 8) for st in (1, 2)]
    options.update({k: [(w, st) for w in (2, 4, 8) for st in (1, 2, 3)] for k in NO_V_BLOCK})
    shared = [("BKS", [32, 64, 128]), ("BT", [32, 64, 128])] + ([("BI", [4, 8, 16])] if "BI" in best else []) \
        + ([("BC", [16, 32])] if "BC" in best else [])
    for key, opts in list(options.items()) + shared:
        if key in KERNELS and f"{key}_warps" not in best:
            continue                                   # a kernel this spec does not launch
        for opt in opts:
            trial = dict(best, **chunked_overrides({key: opt}))
            ms = measure(trial)
            if ms[0] < best_ms[0] * 0.99:
                best, best_ms = trial, ms
                print(f"  tune {spec}: {key}={opt} -> fwd+bwd {ms[0]:.3f} fwd {ms[1]:.3f} ms", flush=True)
    print(f"tune {spec}: best {best!r}  fwd+bwd {best_ms[0]:.3f} fwd {best_ms[1]:.3f} ms", flush=True)
    return best, best_ms


def bench(fn, rep):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=max(10, rep // 4), rep=rep, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--T", default="4096")
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--no-anchor", action="store_true")
    ap.add_argument("--tiles", default="{}", help="tile overrides, a Python dict literal")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                    help="the checks' inputs (fp32: tl.dot's precision as torch's allow_tf32 says; timings stay bf16)")
    ap.add_argument("--rep", type=int, default=100)
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shapes: tests this script")
    ap.add_argument("--tune", action="store_true", help="search tiles per family at B, H and the first T")
    opts = ap.parse_args()
    global DEVICE, DIM
    if opts.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE, DIM = "cpu", 16
        CHECK_SHAPE.update(T=40, cu=[0, 5, 24, 40])
        opts.B, opts.H, opts.T, opts.no_anchor = 1, 2, "40", True
        opts.tiles = repr({"BT": 16, "BV": 16, **eval(opts.tiles)})
    else:
        assert torch.cuda.is_available(), "needs a CUDA GPU"
    import triton
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (interpreter)"
    print(f"device {name}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    tiles = eval(opts.tiles)
    families = opts.families.split(",")
    Ts = [int(t) for t in opts.T.split(",")]
    started = time.time()
    results = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
               "tiles": tiles, "checks": {}, "timings": []}
    if opts.tune:
        out = {}
        for spec in families:
            found, ms = tune(spec, opts.B, Ts[0], opts.H, opts.rep, tiles)
            out[spec] = {"tiles": repr(found), "fwd_bwd_ms": ms[0], "fwd_ms": ms[1]}
        out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "chunked_tune.json").write_text(json.dumps(out, indent=1))
        return
    modules = {}
    for spec in families:
        t0 = time.time()
        modules[spec] = load_module(spec, tiles)
        results.setdefault("lower_s", {})[spec] = time.time() - t0
    if not opts.no_check:
        for spec in families:
            rec, module = modules[spec]
            for varlen in (False, True):
                t0 = time.time()
                try:
                    ok, errs = check(spec, rec, module, varlen, torch.float32 if opts.dtype == "fp32" else torch.bfloat16)
                except Exception as e:
                    ok, errs = False, {"error": f"{type(e).__name__}: {e}"}
                    print(f"check {spec} varlen={varlen} ERROR {errs['error']}", flush=True)
                results["checks"][f"{spec}{'/varlen' if varlen else ''}"] = {"pass": ok, "errors": errs,
                                                                           "seconds": time.time() - t0}
    rows = []
    for T in Ts:
        for spec in families:
            if T != Ts[0] and spec in ("retnet", "mamba2"):
                continue  # no anchor: the main shape is enough
            rec, module = modules[spec]
            sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
            args, _ = make_inputs(rec, opts.B, T, opts.H, torch.bfloat16, DEVICE)
            row = {"family": spec, "T": T}
            try:
                fwd, fwd_bwd = recc_fns(rec, module, args)
                t0 = time.time()
                fwd()
                sync()
                row["recc_first_fwd_s"] = time.time() - t0
                t0 = time.time()
                fwd_bwd()
                sync()
                row["recc_first_fwd_bwd_s"] = time.time() - t0
                if DEVICE == "cuda":
                    row["recc_fwd_ms"] = bench(fwd, opts.rep)
                    row["recc_fwd_bwd_ms"] = bench(fwd_bwd, opts.rep)
            except Exception as e:
                row["recc_error"] = f"{type(e).__name__}: {e}"[:300]
            anchor = None if opts.no_anchor else anchor_fns(spec, rec, args)
            if anchor is not None:
                try:
                    afwd, afwd_bwd = anchor
                    afwd()
                    afwd_bwd()  # autotunes on first call
                    row["anchor_fwd_ms"] = bench(afwd, opts.rep)
                    row["anchor_fwd_bwd_ms"] = bench(afwd_bwd, opts.rep)
                except Exception as e:
                    row["anchor_error"] = f"{type(e).__name__}: {e}"[:300]
            for k in ("fwd", "fwd_bwd"):
                if f"recc_{k}_ms" in row and f"anchor_{k}_ms" in row:
                    row[f"ratio_{k}"] = row[f"anchor_{k}_ms"] / row[f"recc_{k}_ms"]
            rows.append(row)
            print("time", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
                  flush=True)
            del args
    results["timings"] = rows
    results["seconds"] = time.time() - started

    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
    if opts.smoke:
        out_dir = Path(tempfile.mkdtemp())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "chunked_gpu.json").write_text(json.dumps(results, indent=1))

    print("\n== checks (bf16 vs float64 reference, rel err < 2e-2)")
    for name, c in results["checks"].items():
        worst = max((v for v in c["errors"].values() if isinstance(v, float)), default=float("nan"))
        print(f"  {name:24s} {'PASS' if c['pass'] else 'FAIL'}  worst {worst:.2e}")
    print("\n== timings (ms, median; ratio = anchor / recc)")
    print(f"  {'family':16s} {'T':>6s} {'recc fwd':>9s} {'anchor':>8s} {'ratio':>6s} | {'recc f+b':>9s} "
          f"{'anchor':>8s} {'ratio':>6s} | {'cold s':>6s}")
    fmt = lambda r, k: f"{r[k]:.3f}" if k in r else "-"
    for r in rows:
        print(f"  {r['family']:16s} {r['T']:6d} {fmt(r, 'recc_fwd_ms'):>9s} {fmt(r, 'anchor_fwd_ms'):>8s} "
              f"{fmt(r, 'ratio_fwd'):>6s} | {fmt(r, 'recc_fwd_bwd_ms'):>9s} {fmt(r, 'anchor_fwd_bwd_ms'):>8s} "
              f"{fmt(r, 'ratio_fwd_bwd'):>6s} | {fmt(r, 'recc_first_fwd_bwd_s'):>6s}"
              + (f"  ERR {r['recc_error'][:80]}" if "recc_error" in r else ""))
    print(f"\ntotal {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
