#!/usr/bin/env python3
"""Calls of few steps: where a chunked op should hand over to its recurrent kernels, timed.

A chunked op runs a call of few steps (decoding: T = 1, the state carried in `initial_state`)
with its spec's recurrent op where the tile solver's model prices that lower
(`recc.plan.call_strategy`). This script times, on one GPU, per spec and T, the forward of one
call with an initial state and the final state out, for: the chunked kernels (forced), the
recurrent kernels (forced), the op as it decides (`auto`, and which strategy it took), and fla's
own decoding kernel (`fused_recurrent_*`, where fla has one). It prints the measured crossover
(the most steps at which recurrent is the faster) beside the model's, and checks every recc
variant against the float64 reference on a small shape, and the auto op against fla at the
main shape, in the same run.

    python benchmarks/decode.py --out benchmarks/results/<name>.json
    python benchmarks/decode.py --specs gated_delta_net --T 1,4,16,64 --grad   # forward + backward too
    python benchmarks/decode.py --dry-run      # the CPU interpreter, tiny shapes: the harness only

Main shape: B=4 (sequences), H=16, K=V=128, bf16, state fp32.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"   # before Triton is imported

import torch  # noqa: E402

import bench  # noqa: E402 - its inputs, timer and error measure

# spec -> (fla's decoding kernel, how it takes recc's inputs)
FLA = {
    "gated_delta_net": ("fla.ops.fused_recurrent_gated_delta_rule",
                        lambda f, q, k, v, g, beta, **kw: f(q, k, v, g=g, beta=beta, **kw)),
    "delta_net": ("fla.ops.fused_recurrent_delta_rule", lambda f, q, k, v, beta, **kw: f(q, k, v, beta=beta, **kw)),
    "gla": ("fla.ops.fused_recurrent_gla", lambda f, q, k, v, g, **kw: f(q, k, v, gk=g, **kw)),
    "simple_gla": ("fla.ops.fused_recurrent_simple_gla", lambda f, q, k, v, g, **kw: f(q, k, v, g=g, **kw)),
}


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def ops(spec: str) -> dict:
    import recc
    path = ROOT / "specs" / f"{spec}.rec"
    return {"chunked": recc.load(path, strategy="chunked"), "recurrent": recc.load(path, strategy="recurrent"),
            "auto": recc.load(path)}


def arguments(spec: str, sizes: dict, dtype, device, seed: int):
    """recc's inputs, and an initial state (fp32; a tuple where the spec has several states): the
    reference's final state after 8 steps of other random inputs, so it is one the recurrence reaches."""
    from recc.reference import reference
    case = bench.Case(spec, spec, "chunked", "", lambda T: sizes, dtype, None)
    args = bench.recc_args(case, sizes, device, seed)
    prefix = bench.recc_args(case, dict(sizes, T=8), "cpu", seed + 1)
    _, final = reference(bench.spec_of(spec), *[x.double() for x in prefix], output_final_state=True)
    cast = lambda t: t.float().to(device).contiguous()
    return args, tuple(cast(t) for t in final) if isinstance(final, tuple) else cast(final)


def check_small(spec: str, variants: dict, device, grad: bool) -> dict:
    """{variant: worst relative error} against the float64 reference: T = 1 and 3, B=2 H=2 K=V=32."""
    from recc.reference import reference
    rec = bench.spec_of(spec)
    on_cpu = lambda x: tuple(t.double().cpu() for t in x) if isinstance(x, tuple) else x.double().cpu()
    as_tuple = lambda x: x if isinstance(x, tuple) else (x,)
    worst = {}
    for T in (1, 3):
        sizes = dict(B=2, T=T, H=2, K=32, V=32)
        args, h0 = arguments(spec, sizes, torch.float32, device, seed=T)
        ref, ref_final = reference(rec, *[a.double().cpu() for a in args], initial_state=on_cpu(h0),
                                   output_final_state=True)
        for name, op in variants.items():
            with torch.set_grad_enabled(grad):
                out, final = op(*args, initial_state=h0, output_final_state=True)
            errs = [bench.rel_err(o, r) for o, r in zip(as_tuple(out) + as_tuple(final), as_tuple(ref) + as_tuple(ref_final))]
            worst[name] = max(worst.get(name, 0.0), *errs)
    return worst


def time_call(fn, warmup: int, rep: int, leaves=None) -> float:
    """Median ms of fn() (no gradient), or of fn() and its backward with `leaves` given."""
    if leaves is None:
        with torch.no_grad():
            return bench.bench_ms(fn, warmup, rep)
    out = fn()
    dy = torch.randn_like(out)
    return bench.bench_ms(lambda: fn().backward(dy), warmup, rep, grad_to_none=leaves)


def run_spec(spec: str, Ts: list, main: dict, dtype, device, a) -> list:
    variants = ops(spec)
    small = check_small(spec, variants, device, grad=False)
    fla = None
    if spec in FLA and not a.dry_run:
        try:
            fla = (bench._fla(FLA[spec][0]), FLA[spec][1])
        except Exception as error:  # noqa: BLE001 - the row says n/a
            print(f"  {spec}: fla's {FLA[spec][0]} unavailable: {type(error).__name__}: {error}")
    rows = []
    for T in Ts:
        sizes = dict(main, T=T)
        args, h0 = arguments(spec, sizes, dtype, device, seed=0)
        row = {"spec": spec, "T": T, "shape": sizes, "dtype": str(dtype).replace("torch.", ""),
               "grad": a.grad, "small_check": small}
        auto = variants["auto"].module
        auto._STRATEGY_OF.clear()
        with torch.set_grad_enabled(a.grad):
            variants["auto"](*args, initial_state=h0, output_final_state=True)
        row["auto_took"] = next(iter(auto._STRATEGY_OF.values()), "chunked")
        for name, op in variants.items():
            leaves = [x.detach().clone().requires_grad_() for x in args] if a.grad else None
            call = (lambda op, xs: lambda: _first(op(*xs, initial_state=h0, output_final_state=True)[0]))(op, leaves or args)
            row[f"{name}_ms"] = time_call(call, a.warmup, a.rep, leaves)
        if fla is not None:
            f, adapt = fla
            leaves = [x.detach().clone().requires_grad_() for x in args] if a.grad else None
            call = lambda: adapt(f, *(leaves or args), initial_state=h0, output_final_state=True)[0]
            try:
                with torch.no_grad():
                    ref_out = _first(variants["auto"](*args, initial_state=h0, output_final_state=True)[0])
                    row["fla_vs_auto"] = bench.rel_err(call(), ref_out)
                row["fla_ms"] = time_call(call, a.warmup, a.rep, leaves)
            except Exception as error:  # noqa: BLE001 - the row says why
                row["fla_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        rows.append(row)
        fla_ms = f"{row['fla_ms']:.4f}" if "fla_ms" in row else "n/a"
        print(f"{spec:16s} T={T:5d}  chunked {row['chunked_ms']:.4f}  recurrent {row['recurrent_ms']:.4f}  "
              f"auto {row['auto_ms']:.4f} ({row['auto_took']})  fla {fla_ms} ms", flush=True)
    measured = max([r["T"] for r in rows if r["recurrent_ms"] < r["chunked_ms"]], default=0)
    model = max([r["T"] for r in rows if r["auto_took"] == "recurrent"], default=0)
    print(f"{spec}: recurrent faster up to T={measured} (measured); the model hands over up to T={model}; "
          f"small-shape check {', '.join(f'{k} {v:.1e}' for k, v in small.items())}", flush=True)
    for r in rows:
        r["measured_crossover"], r["model_crossover"] = measured, model
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", default="gated_delta_net,delta_net,gla,simple_gla,delta_product,mlstm")
    p.add_argument("--T", default="1,2,4,8,16,32,64,128")
    p.add_argument("--grad", action="store_true", help="time forward + backward (training at few steps)")
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--rep", type=int, default=100)
    p.add_argument("--out", default=None, help="JSON of the rows")
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes (the harness)")
    a = p.parse_args(argv)
    if a.dry_run:
        device, dtype, main_shape = "cpu", torch.float32, dict(B=2, H=2, K=16, V=16)
        bench.DRY_RUN = True
    elif not torch.cuda.is_available():
        print("decode.py: no GPU; nothing timed (--dry-run runs the harness on the CPU)")
        return 0
    else:
        device, dtype, main_shape = "cuda", torch.bfloat16, dict(B=4, H=16, K=128, V=128)
    Ts = [int(t) for t in a.T.split(",")]
    rows, failed = [], []
    for spec in a.specs.split(","):
        spec_rows = run_spec(spec, Ts, main_shape, dtype, device, a)
        rows += spec_rows
        tol = bench.TOL[torch.float32]
        failed += [spec for name, err in spec_rows[0]["small_check"].items() if not err < tol]
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    if a.out:
        Path(a.out).write_text(json.dumps([{**r, **meta} for r in rows], indent=1, default=str))
        print(f"wrote {a.out}")
    if failed:
        print(f"decode.py: small-shape check failed for {sorted(set(failed))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
