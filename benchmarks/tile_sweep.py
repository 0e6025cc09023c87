#!/usr/bin/env python3
"""Exhaustive tile timing (issue #6): the solver's choice against the best of every feasible point.

    python benchmarks/tile_sweep.py --ops scan,simple_gla --out benchmarks/results/<name>.json
    python benchmarks/tile_sweep.py --ops gla --estimate            # the plan and its cost, nothing run
    python benchmarks/tile_sweep.py --ops gla --shared "BT=64" --max-points 20 --time-budget 300
    python benchmarks/tile_sweep.py --dry-run                       # CPU interpreter, tiny shapes: tests this

For each op (the scan: first_order fp32 [B=4, T=4096, H=16, D=128]; the chunked specs at B=4
T=4096 H=16 K=V=128 bf16) the feasible points are enumerated from the op's own constraint
problem (`recc.tiles._setup` on the GPU's model, `recc.solver.term_points`): the feasible
assignments of the shared variables (chunked: BT, BKS, BC) and, for each, every kernel's
feasible own points (<k>_BV, <k>_warps, <k>_stages; wy's BI; the scan's forward and backward
tiles). The objective is separable: a kernel's time depends only on the variables its term
reads (`chunked_terms`, `scan_terms`), so the best joint point at a shared assignment is each
kernel's best there, and timing every (kernel, values it reads) once times every joint point.
One dependence the terms leave out is kept (`Op.coupled`): with per-key decays dqk's code sums
dv's V / dv_BV partial products (a constexpr), so dqk's points are keyed by dv_BV as well and
the points grouped by (shared values, dv_BV).

1. plan: runs, each a feasible joint point, that together hold every kernel point (a run puts a
   not yet covered point in every kernel's slot, the model's best point where a kernel has none
   left), the model's likeliest first (the solver's shared values, then by the model's best
   objective), so a --time-budget or --max-points cut keeps the points the model ranks first.
2. compile: the runs in a pool of --jobs processes (spawned, sharing TRITON_CACHE_DIR), each a
   forward+backward at the main shape: every kernel variant compiled once, into the disk cache.
3. time, in this process: the solver's point first (the reference outputs), then each run: a
   forward+backward whose launches of the tuned kernels are recorded, its outputs, final states
   and every input's and param's gradient compared with the solver's on the same inputs (bf16
   rel. err < 5e-2, fp32 < 1e-4); then each newly covered kernel point timed alone by replaying
   its recorded launches (`triton.testing.do_bench`, median, L2 flushed). A run that fails or
   mismatches is split: each of its new kernel points alone with the model's best for the other
   kernels; a point that still fails is marked (error or mismatch) and never counts as a best.
4. per shared assignment, the best kernel points summed; the best combination of every shared
   assignment (and the solver's point) timed end to end (forward+backward, do_bench median) and
   checked again. best = the fastest of those end to end; ratio = solver / best.

Each op's row (JSON under --out, a table printed last) has the solver's point and its times
(forward+backward, per kernel), the best point and its times, both ratios (end to end and of
the kernel sums), how many points were feasible and timed, the failed points, and `exhaustive`:
true only when every feasible point of the op was timed or marked failed (`cut` says what stopped
it: --shared, --max-points, --time-budget, --e2e-top). `--merge` joins rows of one op swept in
parts over disjoint --shared values (exhaustive when the parts cover every shared assignment).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHUNKED = ["simple_gla", "gla", "delta_net", "gated_delta_net", "delta_product", "mlstm"]
OPS = ["scan"] + CHUNKED
MAIN = {"scan": dict(B=4, T=4096, H=16, D=128), "chunked": dict(B=4, T=4096, H=16, K=128, V=128)}
DRY = {"scan": dict(B=1, T=40, H=1, D=16), "chunked": dict(B=1, T=40, H=1, K=16, V=16)}
TOL = {"bfloat16": 5e-2, "float32": 1e-4}
# the generated module's global of each term's kernel (after "<spec>_"); the other kernels (the
# decays' cumsum, mLSTM's rows) take no tuned tiles and count in the end-to-end times only
KERNEL_GLOBALS = {
    "chunked": {"wy": "chunk_wy_fwd_kernel", "a": "chunk_fwd_A_kernel", "h": "chunk_fwd_h_kernel",
                "o": "chunk_fwd_o_kernel", "dv": "chunk_bwd_dv_kernel", "dh": "chunk_bwd_dh_kernel",
                "dqk": "chunk_bwd_dqk_kernel", "wyb": "chunk_bwd_wy_kernel"},
    "scan": {"forward": "fwd_kernel", "backward": "bwd_kernel"},
}
# rough costs for the estimate (s): a kernel variant's compile on one core, a kernel point's timing, a
# run (forward+backward at the main shape, check, cached binaries loaded), an end-to-end timing
COST = {"compile": {"chunked": 1.0, "scan": 0.5}, "point": 0.04, "run": 0.15, "e2e": 0.6}


# ---- an op: its module, inputs, problem ------------------------------------------------------

class Recorder:
    """Stands in for a Triton kernel in the generated module: records each launch (grid, args,
    kwargs) and passes it on; `replay()` launches them again on the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def replay(self):
        for grid, args, kwargs in self.calls:
            self.kernel[grid](*args, **kwargs)


def _import(source: str, stem: str):
    """The generated source as a module, from a path fixed by its text (every process the same)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "recc_tile_sweep"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}_{digest}.py"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Op:
    def __init__(self, name: str, device: str, sizes: dict, model: str | None = None):
        import torch
        import recc
        from recc import tiles as rt
        self.name, self.device, self.sizes = name, device, dict(sizes)
        self.family = "scan" if name == "scan" else "chunked"
        spec = "first_order" if name == "scan" else name
        self.rec = rec = recc.load_spec(ROOT / "specs" / f"{spec}.rec")
        if self.family == "scan":
            from recc.lower.scan import lower_scan
            self.module = _import(lower_scan(rec).source, f"sweep_{spec}_scan")
            self.module._WRAPPER_SAVES_OUTPUTS = True     # as the op's wrapper (bench.py sweep_scan does too)
            self.overrides = self.module._SCAN_TILES
            self.dtype = torch.float32
        else:
            from recc.lower.chunked import lower_chunked
            self.module = _import(lower_chunked(rec, tiles=None).source, f"sweep_{spec}_chunked")
            self.overrides = self.module._TILES
            self.dtype = torch.bfloat16
        family_dims, _ = rt.launch_shape(rec, self.family)
        self.dims = {k: v for k, v in sizes.items() if k in ("B", "T", "H") or k in family_dims}
        self.dims["T"] = rt._pow2(self.dims["T"])          # as the host code asks (`launch_tiles`)
        spec_size = {**rec.fixed_dims, **{v: sizes[k] for k, v in family_dims.items() if isinstance(v, str)}}
        # the model the host code launches with (`launch_tiles`: the inputs' device); `model` for --estimate
        self.hw = rt.hardware(model) if model else rt._device_model(torch.device(device))
        shape = dict(self.module._LAUNCH_SHAPE)
        problem, terms, _, _, _ = rt._setup(self.family, self.dims, self.hw, shape)
        self.problem = problem
        self.all_terms = terms
        self.terms = [t for t in terms if t.name in KERNEL_GLOBALS[self.family]]   # the interpreter's "shared" term aside
        self.solver = dict(rt.choose_tiles(self.family, self.dims, self.hw, **shape).assignment)
        # variables of other kernels a kernel's code depends on beyond its term's: with per-key decays
        # dqk sums dv's NVB = V / dv_BV partial products of dA (a constexpr), which the cost model's
        # term leaves out; the sweep keys dqk's points by dv_BV too and groups the points by it
        self.coupled = {"dqk": ("dv_BV",)} if shape.get("per_key") else {}
        self.recorders = {}
        for t in self.terms:
            attr = f"{rec.name}_{KERNEL_GLOBALS[self.family][t.name]}"
            if not hasattr(self.module, attr):
                raise RuntimeError(f"{name}: the module has no kernel {attr} for term {t.name}")
            self.recorders[t.name] = Recorder(getattr(self.module, attr))
            setattr(self.module, attr, self.recorders[t.name])
        # inputs [B, T, H, ...] and params [H, ...], drawn as their annotations say
        from recc.primitives import sample_input
        gen = torch.Generator().manual_seed(0)
        size = lambda shp: tuple(spec_size.get(x, x) if isinstance(x, str) else x for x in shp)
        B, T, H = sizes["B"], sizes["T"], sizes["H"]
        args = [sample_input((B, T, H) + size(d.shape), d.annotations, gen, torch.float32) for d in rec.inputs]
        args += [0.5 * sample_input((H,) + size(d.shape), d.annotations, gen, torch.float32) for d in rec.params]
        self.args = [a.to(device=device, dtype=self.dtype).contiguous() for a in args]
        out = rec.outputs[0]
        self.do = torch.randn((B, T, H) + size(out.shape), generator=gen).to(device=device, dtype=self.dtype)

    def set(self, assignment: dict):
        self.overrides.clear()
        self.overrides.update(({"variant": "tile"} if self.family == "scan" else {}) | dict(assignment))

    def run(self, assignment: dict) -> list:
        """Forward + backward at `assignment`; the launches of the tuned kernels are recorded.
        Returns [(name, tensor)] of the outputs, final states and gradients."""
        from recc.signature import bind
        self.set(assignment)
        for r in self.recorders.values():
            r.calls.clear()
        rec, m = self.rec, self.module
        call = bind(rec, tuple(self.args), {})
        call.requires_grad = True
        outputs, finals, saved = m._forward(call)
        out = rec.outputs[0].name
        if self.family == "scan":
            saved = tuple(outputs[o] for o in m._SAVED_OUTPUTS) + tuple(saved)
        d_in, d_par, _ = m._backward(call, saved, {out: self.do}, {})
        got = [(o, v) for o, v in outputs.items()] + [(s, v) for s, v in finals.items()]
        got += [("d" + k, v) for k, v in {**d_in, **d_par}.items() if v is not None]
        missing = [t for t, r in self.recorders.items() if not r.calls]
        if missing:
            raise RuntimeError(f"{self.name}: kernels of terms {missing} were not launched")
        return got

    def fwd_bwd(self, assignment: dict):
        """A no-argument forward + backward at `assignment` (for end-to-end timing)."""
        from recc.signature import bind
        rec, m = self.rec, self.module
        out = rec.outputs[0].name

        def fn():
            self.set(assignment)
            call = bind(rec, tuple(self.args), {})
            call.requires_grad = True
            outputs, finals, saved = m._forward(call)
            if self.family == "scan":
                saved = tuple(outputs[o] for o in m._SAVED_OUTPUTS) + tuple(saved)
            m._backward(call, saved, {out: self.do}, {})
        return fn


def rel_err(got: list, ref: list) -> tuple:
    """(worst relative error, its tensor's name) of `got` against `ref` (same names and order)."""
    worst, which = 0.0, ""
    for (name, x), (_, r) in zip(got, ref):
        x, r = x.detach().double(), r.detach().double()
        e = ((x - r).norm() / r.norm().clamp_min(1e-30)).item()
        e = math.inf if e != e else e
        if e > worst or not which:
            worst, which = e, name
    if len(got) != len(ref):
        return math.inf, "count"
    return worst, which


# ---- the plan --------------------------------------------------------------------------------

def parse_shared(text: str | None) -> dict:
    """'BT=32,64;gla:BKS=64' -> {None: {"BT": {32, 64}}, "gla": {"BKS": {64}}} (an "op:" prefix: that op only)."""
    out = {}
    for part in (text or "").replace(" ", "").split(";"):
        if part:
            op, _, part = part.rpartition(":")
            name, _, values = part.partition("=")
            out.setdefault(op or None, {})[name] = {int(v) for v in values.split(",") if v}
    return out


def plan(op: Op, shared_filter: dict, max_points: int | None) -> dict:
    """The feasible points by shared assignment, the kernel points, the runs (see the docstring)."""
    from recc.solver.split import term_points
    shared, spoints, per = term_points(op.problem, op.all_terms)
    terms = op.terms
    cost = {t.name: t.cost for t in op.all_terms}
    read = {t.name: tuple(t.variables) + op.coupled.get(t.name, ()) for t in terms}
    coupling = sorted({v for vs in op.coupled.values() for v in vs})
    owner = {v: next(t.name for t in terms if v in per[t.name][0]) for v in coupling}

    def kpoint(t, a):
        return (t, tuple(a[v] for v in read[t]))

    groups, joint, feasible_kp = [], 0, {t.name: set() for t in terms}
    unknown = set(shared_filter) - set(shared)
    if unknown:
        raise SystemExit(f"{op.name}: --shared names {sorted(unknown)}, not shared variables ({', '.join(shared)})")
    for sv in spoints:
        s = dict(zip(shared, sv))
        own, n = {}, 1
        for t in terms:
            names, needed, buckets = per[t.name]
            pts = [dict(zip(names, o)) for o in buckets.get(tuple(s[x] for x in needed), [])]
            pts.sort(key=lambda o: (cost[t.name]({v: {**s, **o}[v] for v in t.variables}),))
            own[t.name] = pts
            n *= len(pts)
        if n == 0:                  # some kernel has no point here: no joint point either
            continue
        for c in _split(s, own, coupling, owner):      # one group per value of the coupling variables
            cs, cown = c
            for t in terms:
                for o in cown[t.name]:
                    feasible_kp[t.name].add(kpoint(t.name, {**cs, **o}))
            joint += math.prod(len(v) for v in cown.values())
            model = sum(cost[t.name]({v: {**cs, **cown[t.name][0]}[v] for v in t.variables}) for t in terms)
            groups.append({"shared": cs, "own": cown, "model": model,
                           "selected": all(s[k] in vals for k, vals in shared_filter.items())})
    solver_s = {k: op.solver[k] for k in list(shared) + coupling}
    groups.sort(key=lambda g: (g["shared"] != solver_s, g["model"]))
    covered = {kpoint(t.name, op.solver) for t in terms}      # the reference run times these
    runs, capped = [], False
    for g in groups:
        if not g["selected"]:
            continue
        s, fresh = g["shared"], {}
        for t in terms:
            pts = g["own"][t.name]
            if max_points is not None and len(pts) > max_points:
                pts, capped = pts[:max_points], True
            fresh[t.name] = []
            for o in pts:
                k = kpoint(t.name, {**s, **o})
                if k not in covered:
                    covered.add(k)
                    fresh[t.name].append(o)
        base = {t.name: g["own"][t.name][0] for t in terms}
        for i in range(max((len(v) for v in fresh.values()), default=0)):
            a, new = dict(s), []
            for t in terms:
                o = fresh[t.name][i] if i < len(fresh[t.name]) else base[t.name]
                a.update(o)
                if i < len(fresh[t.name]):
                    new.append(t.name)
            runs.append({"assignment": a, "new": new, "base": {**s, **{k: v for b in base.values() for k, v in b.items()}}})
    complete = not capped and all(g["selected"] for g in groups)
    selected = {tuple(g["shared"][k] for k in shared) for g in groups if g["selected"]}
    return {"shared": shared, "groups": groups, "runs": runs, "joint": joint, "complete": complete,
            "capped": capped, "selected": [dict(zip(shared, x)) for x in sorted(selected)],
            "feasible_kernel_points": {t: len(v) for t, v in feasible_kp.items()},
            "planned_kernel_points": len(covered), "kpoint": kpoint, "read": read, "coupling": coupling,
            "shared_points": len({tuple(g["shared"][k] for k in shared) for g in groups})}


def _split(s: dict, own: dict, coupling: list, owner: dict) -> list:
    """[(s with the coupling variables' values, own points of each term restricted to them)]."""
    out = [(dict(s), dict(own))]
    for v in coupling:
        nxt = []
        for cs, cown in out:
            t = owner[v]
            for value in sorted({o[v] for o in cown[t]}):
                nxt.append(({**cs, v: value}, {**cown, t: [o for o in cown[t] if o[v] == value]}))
        out = nxt
    return out


def estimate(op: Op, p: dict, jobs: int) -> dict:
    compiles = p["planned_kernel_points"]
    compile_s = compiles * COST["compile"][op.family] / max(jobs, 1)
    groups = sum(g["selected"] for g in p["groups"])
    time_s = compiles * COST["point"] + len(p["runs"]) * COST["run"] + groups * COST["e2e"]
    return {"compiles": compiles, "runs": len(p["runs"]), "compile_s": compile_s, "time_s": time_s,
            "total_s": compile_s + time_s}


# ---- compile in parallel ----------------------------------------------------------------------

_WORKER_OPS = {}


def _compile_task(name: str, device: str, sizes: dict, assignments: list) -> tuple:
    """In a worker: a forward+backward at each assignment (fills Triton's disk cache)."""
    key = (name, device, tuple(sorted(sizes.items())))
    if key not in _WORKER_OPS:
        _WORKER_OPS[key] = Op(name, device, sizes)
    op, failed = _WORKER_OPS[key], 0
    for a in assignments:
        try:
            op.run(a)
        except Exception:  # noqa: BLE001 - the timing pass reports it
            failed += 1
    if device != "cpu":
        import torch
        torch.cuda.synchronize()
    return len(assignments), failed


def precompile(op: Op, runs: list, jobs: int, deadline: float) -> dict:
    """The runs' kernels compiled by `jobs` spawned processes (jobs <= 1: in this process)."""
    t0 = time.time()
    assignments = [r["assignment"] for r in runs]
    if not assignments:
        return {"seconds": 0.0, "runs": 0, "failed": 0}
    if jobs <= 1:
        done, failed = _compile_task(op.name, op.device, op.sizes, assignments)
        return {"seconds": time.time() - t0, "runs": done, "failed": failed}
    # first the model's best point of each shared assignment (every run of that assignment fills the
    # other kernels' slots with it: compiled once here, not by every process at once), then the runs
    bases = [dict(op.solver)]                      # the reference run's point too
    for r in runs:
        if r["base"] not in bases:
            bases.append(r["base"])
    size = max(1, min(8, len(assignments) // (jobs * 2) or 1))
    done = failed = 0
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for phase in ([[b] for b in bases], [assignments[i:i + size] for i in range(0, len(assignments), size)]):
            futures = [pool.submit(_compile_task, op.name, op.device, op.sizes, c) for c in phase]
            for i, f in enumerate(concurrent.futures.as_completed(futures)):
                try:
                    n, bad = f.result()
                    done, failed = done + n, failed + bad
                except Exception as e:  # noqa: BLE001
                    print(f"  compile task failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                if (i + 1) % max(1, len(futures) // 10) == 0:
                    print(f"  compiled {i + 1}/{len(futures)} tasks, {time.time() - t0:.0f} s", flush=True)
                if time.time() > deadline:
                    print("  time budget: the remaining compile tasks are cancelled", flush=True)
                    for g in futures:
                        g.cancel()
                    break
            if time.time() > deadline:
                break
    return {"seconds": time.time() - t0, "runs": done, "failed": failed}


# ---- time ---------------------------------------------------------------------------------------

def make_timer(dry: bool, warmup: int, rep: int):
    if dry:
        def timer(fn):
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        return timer
    import triton.testing
    return lambda fn: triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def sweep(op: Op, p: dict, args, deadline: float) -> dict:
    """Steps 3 and 4 of the module docstring for one op; returns its result row."""
    import torch
    dry = op.device == "cpu"
    sync = (lambda: None) if dry else torch.cuda.synchronize
    kernel_timer = make_timer(dry, args.kernel_warmup, args.kernel_rep)
    e2e_timer = make_timer(dry, args.warmup, args.rep)
    tol = args.tol or TOL[str(op.dtype).replace("torch.", "")]
    kpoint = p["kpoint"]
    times, errors, failed = {}, {}, {}           # kernel point -> ms / rel err / reason

    ref = [(n, v.detach().clone()) for n, v in op.run(op.solver)]
    sync()

    def time_new(names, a):
        for t in names:
            k = kpoint(t, a)
            try:
                times[k] = kernel_timer(op.recorders[t].replay)
            except Exception as e:  # noqa: BLE001
                failed[k] = f"error while timing: {type(e).__name__}: {str(e)[:200]}"

    time_new([t.name for t in op.terms], op.solver)
    for t in op.terms:
        errors[kpoint(t.name, op.solver)] = 0.0

    def attempt(a):
        """(ok, reason, err): a run at `a` against the reference."""
        try:
            got = op.run(a)
            sync()
        except Exception as e:  # noqa: BLE001
            return False, f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", None
        err, which = rel_err(got, ref)
        if not err < tol:
            return False, f"mismatch: {which} rel err {err:.2e} against the solver's point", err
        return True, "", err

    term_vars = {t.name: t.variables for t in op.terms}
    cut = False
    stop = deadline - sum(g["selected"] for g in p["groups"]) * COST["e2e"] - 15      # room for the end-to-end timings and the JSON
    for i, r in enumerate(p["runs"]):
        if time.time() > stop:
            cut = True
            print(f"  time budget: stopped after {i} of {len(p['runs'])} runs", flush=True)
            break
        a = r["assignment"]
        ok, reason, err = attempt(a)
        if ok:
            for t in r["new"]:
                errors[kpoint(t, a)] = err
            time_new(r["new"], a)
            continue
        for t in r["new"]:                      # split: each new point alone, the model's best elsewhere
            own = [n for n in term_vars[t] if n not in p["shared"]]
            alone = {**r["base"], **{n: a[n] for n in own}}
            ok1, reason1, err1 = attempt(alone)
            k = kpoint(t, a)
            if ok1:
                errors[k] = err1
                time_new([t], alone)
            else:
                failed[k] = reason1
                print(f"  {op.name}: {t} {dict(zip(p['read'][t], k[1]))} FAILED {reason1}", flush=True)
        if (i + 1) % 50 == 0:
            print(f"  {op.name}: {i + 1}/{len(p['runs'])} runs, {len(times)} kernel points timed", flush=True)

    # 4. per shared assignment: the best of each kernel, summed; then end to end
    per_shared = []
    for g in p["groups"]:
        if not g["selected"]:
            continue
        s, best, parts = g["shared"], {}, {}
        for t in op.terms:
            timed = [(times[kpoint(t.name, {**s, **o})], o) for o in g["own"][t.name]
                     if kpoint(t.name, {**s, **o}) in times]
            if not timed:
                break
            ms, o = min(timed, key=lambda x: x[0])
            best.update(o)
            parts[t.name] = ms
        else:
            complete = all(kpoint(t.name, {**s, **o}) in times or kpoint(t.name, {**s, **o}) in failed
                           for t in op.terms for o in g["own"][t.name])
            per_shared.append({"shared": s, "point": {**s, **best}, "kernels_ms": parts,
                               "kernel_sum_ms": sum(parts.values()), "all_timed": complete})
    per_shared.sort(key=lambda x: x["kernel_sum_ms"])
    solver_parts = {t.name: times.get(kpoint(t.name, op.solver)) for t in op.terms}
    solver_sum = None if None in solver_parts.values() else sum(solver_parts.values())
    e2e = []
    candidates = [("solver", op.solver)] + [("shared", c["point"]) for c in per_shared[:args.e2e_top or None]]
    for what, a in candidates:
        ok, reason, err = attempt(a)
        if not ok:
            print(f"  {op.name}: end to end at {a}: {reason}", flush=True)
            e2e.append({"what": what, "point": a, "fwd_bwd_ms": None, "error": reason})
            continue
        fn = op.fwd_bwd(a)
        fn()
        sync()
        e2e.append({"what": what, "point": a, "fwd_bwd_ms": e2e_timer(fn), "rel_err": err})
    for c in per_shared:
        c["fwd_bwd_ms"] = next((x["fwd_bwd_ms"] for x in e2e[1:] if x["point"] == c["point"]), None)
    solver_ms = e2e[0]["fwd_bwd_ms"]
    timed_e2e = [x for x in e2e if x["fwd_bwd_ms"] is not None]
    best = min(timed_e2e, key=lambda x: x["fwd_bwd_ms"]) if timed_e2e else None
    best_parts = {t.name: times.get(kpoint(t.name, best["point"])) for t in op.terms} if best else {}
    best_kernels = per_shared[0] if per_shared else None
    attempted = all(kpoint(t.name, {**g["shared"], **o}) in times or kpoint(t.name, {**g["shared"], **o}) in failed
                    for g in p["groups"] if g["selected"] for t in op.terms for o in g["own"][t.name])
    exhaustive = p["complete"] and not cut and attempted and (args.e2e_top or math.inf) >= len(per_shared)
    points = [{"kernel": k[0], "point": dict(zip(p["read"][k[0]], k[1])), "ms": ms, "rel_err": errors.get(k)}
              for k, ms in times.items()]
    points += [{"kernel": k[0], "point": dict(zip(p["read"][k[0]], k[1])), "ms": None, "failed": why}
               for k, why in failed.items()]
    return {
        "op": op.name, "family": op.family, "sizes": op.sizes, "dtype": str(op.dtype).replace("torch.", ""),
        "hardware_model": op.hw.name,
        "solver": op.solver, "solver_fwd_bwd_ms": solver_ms, "solver_kernels_ms": solver_parts,
        "solver_kernel_sum_ms": solver_sum,
        "best": best["point"] if best else None, "best_fwd_bwd_ms": best["fwd_bwd_ms"] if best else None,
        "best_kernels_ms": best_parts,
        "best_kernel_sum": best_kernels["point"] if best_kernels else None,
        "best_kernel_sum_ms": best_kernels["kernel_sum_ms"] if best_kernels else None,
        "ratio_fwd_bwd": solver_ms / best["fwd_bwd_ms"] if best and solver_ms else None,
        "ratio_kernel_sum": solver_sum / best_kernels["kernel_sum_ms"] if best_kernels and solver_sum else None,
        "feasible": {"shared_points": p["shared_points"], "groups": len(p["groups"]), "coupling": p["coupling"],
                     "kernel_points": p["feasible_kernel_points"],
                     "kernel_points_total": sum(p["feasible_kernel_points"].values()), "joint_points": p["joint"]},
        "timed": {"kernel_points": len(times), "failed_kernel_points": len(failed), "runs": len(p["runs"]),
                  "end_to_end": len(timed_e2e)},
        "failed": [x for x in points if x.get("failed")],
        "tolerance": tol, "max_rel_err_passed": max((e for e in errors.values() if e is not None), default=None),
        "exhaustive": bool(exhaustive),
        "cut": {"shared": not all(g["selected"] for g in p["groups"]), "max_points": p["capped"], "time_budget": cut,
                "e2e_top": (args.e2e_top or math.inf) < len(per_shared), "untimed_points": not attempted},
        "shared_selected": p["selected"],
        "per_shared": per_shared, "end_to_end": e2e, "points": points,
    }


# ---- main -----------------------------------------------------------------------------------

def table(rows: list) -> str:
    head = (f"{'op':16s} {'feasible: shared/kernel/joint':>30s} {'timed':>6s} {'fail':>4s} {'exh':>4s} | "
            f"{'solver f+b':>10s} {'best f+b':>9s} {'ratio':>6s} | {'solver Σk':>9s} {'best Σk':>8s} {'ratio':>6s}")
    lines = [head, "-" * len(head)]
    f = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"
    for r in rows:
        fe = r["feasible"]
        lines.append(f"{r['op']:16s} {fe['shared_points']:>6d}/{fe['kernel_points_total']:>6d}/{fe['joint_points']:>15.3g} "
                     f"{r['timed']['kernel_points']:>6d} {r['timed']['failed_kernel_points']:>4d} "
                     f"{'yes' if r['exhaustive'] else 'no':>4s} | {f(r['solver_fwd_bwd_ms']):>10s} "
                     f"{f(r['best_fwd_bwd_ms']):>9s} {f(r['ratio_fwd_bwd'], 2):>6s} | "
                     f"{f(r['solver_kernel_sum_ms']):>9s} {f(r['best_kernel_sum_ms']):>8s} {f(r['ratio_kernel_sum'], 2):>6s}")
    for r in rows:
        lines.append(f"{r['op']}: solver {described(r['solver'])}")
        lines.append(f"{'':{len(r['op'])}s}  best   {described(r['best'])}")
        ks = " ".join(f"{k}={v:.3f}" if v is not None else f"{k}=-" for k, v in r["solver_kernels_ms"].items())
        kb = " ".join(f"{k}={v:.3f}" if v is not None else f"{k}=-" for k, v in r["best_kernels_ms"].items())
        lines.append(f"{'':{len(r['op'])}s}  kernels ms, solver: {ks}; best: {kb}")
    return "\n".join(lines)


def merge(paths: list, out: str | None) -> int:
    """One row per op from rows of several runs that each swept part of its shared assignments
    (--shared): kernel points and failures joined; the best is the fastest part's best; the ratios
    are the largest of the parts' own (each part timed the solver's point and its best in the same
    process); exhaustive when the parts were cut by --shared only and together cover every shared
    assignment."""
    parts = {}
    metas = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        metas.append(data["meta"])
        for r in data["rows"]:
            parts.setdefault(r["op"], []).append(r)
    rows = []
    for op, rs in parts.items():
        best = min((r for r in rs if r["best_fwd_bwd_ms"] is not None), key=lambda r: r["best_fwd_bwd_ms"], default=rs[0])
        row = dict(best)
        seen, points = set(), []
        for r in rs:
            for x in r["points"]:
                key = (x["kernel"], json.dumps(x["point"], sort_keys=True))
                if key not in seen:
                    seen.add(key)
                    points.append(x)
        selected = {json.dumps(s, sort_keys=True) for r in rs for s in r["shared_selected"]}
        only_shared = all(not any(v for k, v in r["cut"].items() if k != "shared") for r in rs)
        ratios = [r["ratio_fwd_bwd"] for r in rs if r["ratio_fwd_bwd"] is not None]
        ksums = [r["ratio_kernel_sum"] for r in rs if r["ratio_kernel_sum"] is not None]
        row.update(points=points, failed=[x for x in points if x.get("failed")],
                   ratio_fwd_bwd=max(ratios, default=None), ratio_kernel_sum=max(ksums, default=None),
                   per_shared=sorted((c for r in rs for c in r["per_shared"]), key=lambda c: c["kernel_sum_ms"]),
                   end_to_end=[x for r in rs for x in r["end_to_end"]],
                   shared_selected=[json.loads(x) for x in sorted(selected)],
                   exhaustive=only_shared and len(selected) == best["feasible"]["shared_points"],
                   parts=[{"solver_fwd_bwd_ms": r["solver_fwd_bwd_ms"], "best_fwd_bwd_ms": r["best_fwd_bwd_ms"],
                           "ratio_fwd_bwd": r["ratio_fwd_bwd"], "shared_selected": r["shared_selected"], "cut": r["cut"]}
                          for r in rs])
        row["timed"] = dict(best["timed"], kernel_points=sum(1 for x in points if x["ms"] is not None),
                            failed_kernel_points=len(row["failed"]), runs=sum(r["timed"]["runs"] for r in rs))
        rows.append(row)
    target = Path(out) if out else Path(paths[0]).with_suffix(".merged.json")
    target.write_text(json.dumps({"meta": {"merged": paths, "parts": metas}, "rows": rows}, indent=1, default=str))
    print(table(rows))
    print(f"\nwrote {target}")
    return 0


def described(a: dict | None) -> str:
    return "-" if a is None else " ".join(f"{k}={v}" for k, v in a.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of: {', '.join(OPS)}")
    ap.add_argument("--shared", default=None,
                    help="only these shared values, e.g. 'BT=32,64;BKS=64' (the row is then not exhaustive)")
    ap.add_argument("--max-points", type=int, default=None,
                    help="per kernel and shared assignment, time only the model's best N points (not exhaustive)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds for the whole command; work left when it runs out is skipped (not exhaustive)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="compile processes (default: the CPU count, at most 16; the dry run: 1, in this process)")
    ap.add_argument("--warmup", type=int, default=25, help="end to end: do_bench warmup (ms)")
    ap.add_argument("--rep", type=int, default=100, help="end to end: do_bench rep (ms)")
    ap.add_argument("--kernel-warmup", type=int, default=2, help="per kernel point: do_bench warmup (ms)")
    ap.add_argument("--kernel-rep", type=int, default=10, help="per kernel point: do_bench rep (ms)")
    ap.add_argument("--e2e-top", type=int, default=None,
                    help="time end to end the best combination of only this many groups (by kernel sum; default all)")
    ap.add_argument("--tol", type=float, default=None,
                    help="relative error against the solver's point beyond which a point is wrong (bf16 5e-2, fp32 1e-4)")
    ap.add_argument("--T", type=int, default=None, help="steps (default: the main shape's 4096)")
    ap.add_argument("--estimate", action="store_true", help="print the plan and its estimated cost, run nothing")
    ap.add_argument("--model", default=None,
                    help="with --estimate: the hardware model to enumerate for (a preset, e.g. h200) instead of the GPU's")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, Triton interpreter, tiny shapes, the solver's shared values, 2 points per kernel")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="merge the rows of these result files (one op swept in parts with --shared) into --out")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<date>-<device>-tile-sweep.json)")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton
    ops = [o for o in args.ops.split(",") if o]
    unknown = set(ops) - set(OPS)
    if unknown:
        print(f"unknown ops: {', '.join(sorted(unknown))} (known: {', '.join(OPS)})")
        return 2
    if args.dry_run:
        device, shapes = "cpu", DRY
        args.max_points = 2 if args.max_points is None else args.max_points
        args.jobs = 1 if args.jobs is None else args.jobs
    else:
        if not torch.cuda.is_available():
            print("tile_sweep needs a CUDA GPU (or --dry-run, --estimate)")
            if not args.estimate:
                return 0
        device, shapes = "cuda", MAIN
    if args.jobs is None:
        args.jobs = min(16, os.cpu_count() or 1)
    started = time.time()
    deadline = started + args.time_budget if args.time_budget else math.inf
    name = (torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run
            else "cpu (interpreter, dry run)" if args.dry_run else "cpu (estimate only)")
    print(f"device {name}  torch {torch.__version__}  triton {triton.__version__}  jobs {args.jobs}", flush=True)
    shared_filter = parse_shared(args.shared)

    prepared = []
    for o in ops:
        sizes = dict(shapes["scan" if o == "scan" else "chunked"])
        if args.T:
            sizes["T"] = args.T
        if args.model and not args.estimate:
            print("--model goes with --estimate only (a sweep enumerates for the model the host code launches with)")
            return 2
        op = Op(o, device if torch.cuda.is_available() or args.dry_run else "cpu", sizes, args.model)
        filt = {**shared_filter.get(None, {}), **shared_filter.get(o, {})}
        if args.dry_run and not filt:     # the solver's shared values only
            from recc.solver.split import term_points
            filt = {k: {op.solver[k]} for k in term_points(op.problem, op.all_terms)[0]}
        filt = {k: v for k, v in filt.items() if k in {x.name for x in op.problem.variables}}
        p = plan(op, filt, args.max_points)
        est = estimate(op, p, args.jobs)
        prepared.append((op, p, est))
        fk = p["feasible_kernel_points"]
        print(f"{o}: model {op.hw.name}; solver {described(op.solver)}", flush=True)
        groups = f" in {len(p['groups'])} groups by {', '.join(p['coupling'])}" if p["coupling"] else ""
        print(f"  feasible: {p['shared_points']} shared assignments ({', '.join(p['shared']) or 'none'}){groups}, kernel points "
              + ", ".join(f"{k} {v}" for k, v in fk.items()) + f" = {sum(fk.values())}, joint points {p['joint']:.4g}",
              flush=True)
        print(f"  plan: {est['compiles']} kernel points (compiles), {est['runs']} runs"
              f"{'' if p['complete'] else ' (cut by --shared / --max-points: not exhaustive)'}; "
              f"estimate {est['compile_s'] / 60:.1f} min compile ({args.jobs} jobs) + {est['time_s'] / 60:.1f} min "
              f"timing = {est['total_s'] / 60:.1f} min", flush=True)
    total = sum(e["total_s"] for _, _, e in prepared)
    print(f"estimated total {total / 60:.1f} min (device time, machine start not counted)", flush=True)
    if args.estimate:
        return 0

    rows, errors = [], []
    for op, p, est in prepared:
        if time.time() > deadline:
            print(f"{op.name}: time budget spent, skipped", flush=True)
            continue
        print(f"== {op.name}", flush=True)
        c = {"seconds": 0.0, "runs": 0, "failed": 0}
        if device == "cuda" or args.dry_run:
            # the dry run: the compile task on the first run only (nothing compiles under the interpreter)
            runs = p["runs"][:max(1, args.jobs)] if args.dry_run else p["runs"]
            c = precompile(op, runs, args.jobs, started + 0.6 * (deadline - started) if args.time_budget else math.inf)
            print(f"  compiled: {c['runs']} runs in {c['seconds']:.0f} s ({c['failed']} raised; the timing pass "
                  f"reports them)", flush=True)
        t0 = time.time()
        try:
            row = sweep(op, p, args, deadline)
        except Exception as e:  # noqa: BLE001 - e.g. the solver's own point fails: the other ops go on
            import traceback
            traceback.print_exc()
            errors.append({"op": op.name, "error": f"{type(e).__name__}: {str(e)[:500]}"})
            continue
        row["seconds"] = {"compile": c["seconds"], "time": time.time() - t0}
        row["estimate"] = est
        row["limits"] = {"shared": args.shared, "max_points": args.max_points, "time_budget": args.time_budget,
                         "e2e_top": args.e2e_top}
        rows.append(row)
        print(f"  {op.name}: solver {row['solver_fwd_bwd_ms']} ms, best {row['best_fwd_bwd_ms']} ms, "
              f"ratio {row['ratio_fwd_bwd']}, exhaustive {row['exhaustive']}, {time.time() - t0:.0f} s", flush=True)
    meta = {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
            "seconds": time.time() - started}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"{datetime.date.today()}-{'cpu-dry' if args.dry_run else name.split()[-1].lower()}-tile-sweep.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "errors": errors}, indent=1, default=str))
    print()
    print(table(rows))
    for e in errors:
        print(f"{e['op']}: FAILED {e['error']}")
    print(f"\nwrote {out}  ({meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
