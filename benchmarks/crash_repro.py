#!/usr/bin/env python3
"""Which of BT / BV / warps / stages makes the chunked kernels fault on a GPU ("CUDA error: an illegal
memory access"): every point in a fresh process, forward + backward at the main shape.

    python benchmarks/crash_repro.py                         # every point below, 4 processes at a time
    python benchmarks/crash_repro.py --only simple_gla       # the points of one spec
    python benchmarks/crash_repro.py --sanitize              # each point under compute-sanitizer memcheck
    python benchmarks/crash_repro.py --list                  # the points, nothing run

A point is a spec and tile overrides over the solver's choice at the main shape (B=4, T=4096, H=16,
K=V=128, bf16, with an initial state): the shared BT, BKS and one kernel's (BV, warps, stages), e.g.
"dv=(32,4,1)" (every other kernel keeps the solver's tiles). Per point a child process builds the
inputs (seed 0), runs forward + backward at the solver's tiles (the baseline; skipped with
--sanitize), then at the point, each kernel launch followed by a synchronize, so a fault names the
kernel that raised it; the point's outputs, final states and gradients are compared with the
baseline's (`diff`: the largest relative difference; above 5e-2 the point is a MISMATCH).
Statuses: ok, MISMATCH, CRASH (kernel, error), TIMEOUT, ERROR (anything else, e.g. out of resources).
Tests only: --smoke runs on the CPU interpreter at a tiny shape; RECC_CRASH_SIMULATE=<kernel name
substring> makes that kernel's launches raise CUDA's illegal-address error.

The points: the ones that crashed in the H200 tile sweep (Triton 3.6; benchmarks/results/
2026-12-03-h200-sweep-*.log) and around each the same point with the other num_stages (1, 2, 3), the
other num_warps (4, 8), BV 64, and the production tiles (BV 64, 8 warps, 2 stages) at its BT, and the other K block (BKS 32 or 64);
mLSTM's whole-run crash and each of its three kernels alone; DeltaNet (and gated) at BT = 64 with
each kernel in turn at 8 warps / 3 stages (the householder crash of an earlier sweep).

--sanitize runs each child under `compute-sanitizer --tool memcheck` (filtered to the point's
kernel where it names one) and reports its first error: the access (global/shared, read/write,
size), the kernel, thread and block, and where the address lies. An out-of-bounds GLOBAL address
from an active lane is a kernel bug; a SHARED one, or none at all while the launch still faults,
points at the compiler. The CPU interpreter's address sanitizer (benchmarks/oob_check.py) found
none at these points.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAIN = dict(B=4, T=4096, H=16, K=128, V=128)
SMOKE = dict(B=1, T=70, H=1, K=32, V=32)    # --smoke: the CPU interpreter (tests this script)
TOL = 5e-2


def _kernel_tiles(kernel, bv, warps, stages):
    return {f"{kernel}_BV": bv, f"{kernel}_warps": warps, f"{kernel}_stages": stages}


def _around(spec, kernel, shared, tile, why):
    """The crashing point and its neighbours: other stages, other warps, BV 64, production tiles."""
    bv, w, s = tile
    out = [(f"{why}", (bv, w, s))]
    out += [(f"stages {s2}", (bv, w, s2)) for s2 in (1, 2, 3) if s2 != s]
    out += [(f"warps {w2}", (bv, w2, s)) for w2 in (4, 8) if w2 != w]
    if bv != 64:
        out.append(("BV 64", (64, w, s)))
    if (bv, w, s) != (64, 8, 2):
        out.append(("production tile", (64, 8, 2)))
    pts = [dict(spec=spec, kernel=kernel, label=f"{kernel} {label}", tiles={**shared, **_kernel_tiles(kernel, *t)})
           for label, t in out]
    bks = 32 if shared["BKS"] != 32 else 64     # the K block: the sweep's mLSTM dv passed at BKS 32
    pts.append(dict(spec=spec, kernel=kernel, label=f"{kernel} {why}, BKS {bks}",
                    tiles={**shared, "BKS": bks, **_kernel_tiles(kernel, bv, w, s)}))
    return pts


def points():
    pts = []
    for spec in ("simple_gla", "mlstm"):
        pts.append(dict(spec=spec, kernel=None, label="solver (control)", tiles={}))
    # crashed alone in the H200 sweep (the rest at known-good points)
    pts += _around("simple_gla", "dv", dict(BT=64, BKS=64), (32, 4, 1), "crashed")
    pts += _around("simple_gla", "dv", dict(BT=128, BKS=64), (32, 8, 1), "crashed")
    pts += _around("simple_gla", "dv", dict(BT=128, BKS=32), (16, 4, 1), "crashed")
    pts += _around("mlstm", "o", dict(BT=64, BKS=64), (32, 4, 1), "crashed")
    pts += _around("mlstm", "dv", dict(BT=64, BKS=64), (32, 4, 1), "crashed")
    # simple GLA's o at the tile that broke the sweep's main process; mLSTM's o that gave wrong di (0.39)
    pts += _around("simple_gla", "o", dict(BT=64, BKS=64), (32, 4, 1), "crashed (main process)")[:1]
    pts.append(dict(spec="mlstm", kernel="o", label="o mismatched (di 0.39)",
                    tiles=dict(BT=64, BKS=64, **_kernel_tiles("o", 128, 4, 2))))
    # mLSTM's whole run that crashed, and each of its kernels alone
    whole = dict(o=(32, 4, 2), dv=(32, 4, 2), dqk=(16, 4, 2))
    shared = dict(BT=64, BKS=128)
    pts.append(dict(spec="mlstm", kernel=None, label="whole run crashed",
                    tiles={**shared, **{k: v for kern, t in whole.items() for k, v in _kernel_tiles(kern, *t).items()}}))
    pts += [dict(spec="mlstm", kernel=kern, label=f"{kern} alone of the whole run",
                 tiles={**shared, **_kernel_tiles(kern, *t)}) for kern, t in whole.items()]
    # householder at BT = 64 (capped at 32 on GPUs: hh_chunk_gpu)
    for spec in ("delta_net", "gated_delta_net"):
        pts.append(dict(spec=spec, kernel=None, label="BT 64, solver's kernel tiles", tiles=dict(BT=64)))
    for kern in ("wy", "h", "o", "dv", "dh", "dqk", "wyb"):
        pts.append(dict(spec="delta_net", kernel=kern, label=f"BT 64, {kern} at 8 warps 3 stages",
                        tiles={"BT": 64, f"{kern}_warps": 8, f"{kern}_stages": 3}))
    pts.append(dict(spec="delta_net", kernel=None, label="BT 64, every kernel at 8 warps 3 stages",
                    tiles={"BT": 64, **{f"{k}_{x}": v for k in ("wy", "h", "o", "dv", "dh", "dqk", "wyb")
                                        for x, v in (("warps", 8), ("stages", 3))}}))
    for i, p in enumerate(pts):
        p["id"] = i
    return pts


# ---- the child: one point in this process --------------------------------------------------------

class KernelFault(RuntimeError):
    pass


_ARMED = False   # the point's run (not the baseline's): RECC_CRASH_SIMULATE applies


class _Synced:
    """Stands in for a kernel of the generated module: launches it, then synchronizes, so an
    asynchronous fault is raised (and named) at the launch that caused it."""

    def __init__(self, name, kernel):
        self.name, self.kernel = name, kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            import torch
            try:
                if _ARMED and os.environ.get("RECC_CRASH_SIMULATE", "\0") in self.name:   # tests only
                    raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")
                self.kernel[grid](*args, **kwargs)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
            except Exception as e:  # noqa: BLE001
                raise KernelFault(f"{self.name}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}") from e
        return launch

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def child(point: dict, baseline: bool, smoke: bool = False, repeat: int = 3) -> dict:
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import recc
    from chunked_gpu_check import module_of, rel_err
    from recc.lower.chunked import chunked_form
    from recc.primitives import sample_input
    from recc.signature import bind

    rec = recc.load_spec(ROOT / "specs" / f"{point['spec']}.rec")
    module = module_of(rec)
    for name in [n for n in vars(module) if n.endswith("_kernel") and hasattr(vars(module)[n], "run")]:
        setattr(module, name, _Synced(name, getattr(module, name)))

    shape = SMOKE if smoke else MAIN
    B, T, H = shape["B"], shape["T"], shape["H"]
    gen = torch.Generator().manual_seed(0)
    form = chunked_form(rec)
    dims = {form.K: shape["K"], form.V: shape["V"]} | rec.fixed_dims
    size = lambda s: tuple(dims.get(x, x) for x in s)
    dt, dev = torch.bfloat16, "cpu" if smoke else "cuda"
    args = [sample_input((B, T, H) + size(d.shape), d.annotations, gen, torch.float32) for d in rec.inputs]
    args += [sample_input((H,) + size(d.shape), d.annotations, gen, torch.float32) for d in rec.params]
    args = [a.to(device=dev, dtype=dt) for a in args]
    init = tuple(torch.randn((B, H) + size(s.shape), generator=gen).to(dev) for s in rec.states)
    do = torch.randn((B, T, H) + size(rec.outputs[0].shape), generator=gen).to(device=dev, dtype=dt)
    ds = {s.name: torch.randn((B, H) + size(s.shape), generator=gen).to(dev) for s in rec.states}
    kw = dict(output_final_state=True, initial_state=init[0] if len(init) == 1 else init)
    out = rec.outputs[0].name

    def run(tiles):
        module._TILES.clear()
        module._TILES.update(tiles)
        call = bind(rec, tuple(args), kw)
        call.requires_grad = True
        outputs, finals, saved = module._forward(call)
        d_in, d_par, d_init = module._backward(call, saved, {out: do}, ds)
        if dev == "cuda":
            torch.cuda.synchronize()
        got = {f"o": outputs[out]} | {f"final {k}": v for k, v in finals.items()}
        got |= {f"d{k}": v for k, v in {**d_in, **d_par}.items() if v is not None}
        got |= {f"d{k}0": v for k, v in d_init.items() if v is not None}
        return {k: v.detach().float().cpu() for k, v in got.items()}, dict(call.memo["launch"])

    res = dict(point)
    ref = None
    if baseline:
        try:
            ref, res["baseline_tiles"] = run({})
        except Exception as e:  # noqa: BLE001
            res.update(status="ERROR", error=f"the baseline (solver's tiles) failed: {type(e).__name__}: {e}"[:400])
            return res
    global _ARMED
    _ARMED = True
    t0 = time.time()
    try:
        for _ in range(repeat):    # a fault may not come every time
            got, res["launched"] = run(point["tiles"])
    except KernelFault as e:
        res.update(status="CRASH", error=str(e), kernel_faulted=str(e).split(":")[0])
        return res
    except Exception as e:  # noqa: BLE001
        text = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        res.update(status="CRASH" if "illegal" in text.lower() or "cuda error" in text.lower() else "ERROR",
                   error=text)
        return res
    res["secs"] = round(time.time() - t0, 2)
    if ref is not None:
        diffs = {k: rel_err(got[k], ref[k]) for k in ref}
        worst = max(diffs, key=diffs.get)
        res.update(diff=diffs[worst], worst=worst)
        res["status"] = "ok" if diffs[worst] < TOL else "MISMATCH"
    else:
        res["status"] = "ok"
    return res


# ---- the parent: a fresh process per point -------------------------------------------------------

_FIRST = re.compile(r"^=+ (Invalid __\w+__ .*|.*[Ee]rror.*|Program hit .*)$")


def _memcheck_first(text: str) -> str | None:
    lines = [ln for ln in text.splitlines() if ln.startswith("=========")]
    for i, ln in enumerate(lines):
        if _FIRST.match(ln) and "ERROR SUMMARY: 0 errors" not in ln:
            return " | ".join(x.strip("= ").strip() for x in lines[i:i + 6] if x.strip("= ").strip())
    return None


def run_point(p: dict, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(p), "--repeat", str(args.repeat)]
    cmd += ["--smoke"] if args.smoke else []
    if args.sanitize:
        cmd.append("--no-baseline")
        san = [args.sanitizer, "--tool", "memcheck", "--print-limit", "4"]
        if p.get("kernel"):
            san += ["--kernel-name", f"kns={p['spec']}_chunk_"
                    + {"wy": "wy_fwd", "h": "fwd_h", "o": "fwd_o", "dv": "bwd_dv", "dh": "bwd_dh",
                       "dqk": "bwd_dqk", "wyb": "bwd_wy"}[p["kernel"]] + "_kernel"]
        cmd = san + cmd
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
        if args.sanitize and "RESULT " not in proc.stdout and "--kernel-name" in cmd \
                and re.search(r"kernel-name|unrecognized|unknown option", proc.stdout + proc.stderr, re.I):
            i = cmd.index("--kernel-name")          # an older compute-sanitizer: no filter
            cmd = cmd[:i] + cmd[i + 2:]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(p, status="TIMEOUT", secs=round(time.time() - t0, 1))
    res = None
    for ln in proc.stdout.splitlines():
        if ln.startswith("RESULT "):
            res = json.loads(ln[7:])
    if res is None:
        tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-3:]
        res = dict(p, status="CRASH" if "illegal" in (proc.stderr + proc.stdout).lower() else "ERROR",
                   error=" | ".join(tail)[:500], rc=proc.returncode)
    if args.sanitize:
        res["memcheck"] = _memcheck_first(proc.stdout + "\n" + proc.stderr) or "no error reported"
    res["wall"] = round(time.time() - t0, 1)
    return res


def _fmt(r: dict) -> str:
    tiles = " ".join(f"{k}={v}" for k, v in r["tiles"].items()) or "(solver)"
    s = f"{r['status']:8s} #{r['id']:<2d} {r['spec']:15s} {r['label']:38s} {tiles}"
    if "diff" in r:
        s += f"  diff={r['diff']:.1e} ({r['worst']})"
    if r.get("error"):
        s += f"\n           {r['error']}"
    if r.get("memcheck"):
        s += f"\n           memcheck: {r['memcheck']}"
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="comma-separated specs, or point ids (#)")
    ap.add_argument("--jobs", type=int, default=4, help="child processes at a time (default 4)")
    ap.add_argument("--timeout", type=float, default=150, help="seconds per point (default 150)")
    ap.add_argument("--sanitize", action="store_true", help="under compute-sanitizer memcheck (no baseline)")
    ap.add_argument("--sanitizer", default=shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer")
    ap.add_argument("--repeat", type=int, default=3, help="forward+backward runs of each point (default 3)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shape (tests this script)")
    ap.add_argument("--out", default=None, help="JSON of every result (default $OUT/crash_repro.json if $OUT)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-baseline", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(json.loads(a.child), not a.no_baseline, a.smoke, a.repeat)), flush=True)
        return 0
    pts = points()
    if a.only:
        keys = a.only.split(",")
        pts = [p for p in pts if p["spec"] in keys or str(p["id"]) in keys]
    if a.list:
        for p in pts:
            print(f"#{p['id']:<2d} {p['spec']:15s} {p['label']:38s} {p['tiles']}")
        return 0
    if a.sanitize and not Path(a.sanitizer).exists():
        print(f"no compute-sanitizer at {a.sanitizer}; run without --sanitize")
        return 2
    print(f"{len(pts)} points, {a.jobs} at a time{', under memcheck' if a.sanitize else ''}", flush=True)
    results = []
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        for r in pool.map(lambda p: run_point(p, a), pts):
            results.append(r)
            print(_fmt(r), flush=True)
    print("\nsummary (status per point):")
    for r in sorted(results, key=lambda r: r["id"]):
        print("  " + _fmt(r).splitlines()[0])
    out = a.out or (os.path.join(os.environ["OUT"], "crash_repro.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
