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
2. compile: the runs in --jobs worker processes (spawned, sharing TRITON_CACHE_DIR), each a
   forward+backward at the main shape: every kernel variant compiled once, into the disk cache.
   A GPU fault (an illegal address: sticky, every later CUDA call of the process fails; any error
   `context_broken` recognises) stops the worker's task at the run that caused it; the runs after
   it go to a fresh process (a worker is replaced after a fault), and a faulting run with several
   new kernel points is retried point by point (each alone on the run's base, as in step 3) to
   name the guilty ones. The timing process never runs what faulted in a worker.
3. time, in the timing process (spawned; this command's own process only drives it): the solver's
   point first (the reference outputs), then each run: a forward+backward whose launches of the
   tuned kernels are recorded, its outputs, final states and every input's and param's gradient
   compared with the solver's on the same inputs (bf16 rel. err < 5e-2, fp32 < 1e-4); then each
   newly covered kernel point timed alone by replaying its recorded launches
   (`triton.testing.do_bench`, median, L2 flushed). A run that fails or mismatches is split: each
   of its new kernel points alone with the model's best for the other kernels; a point that still
   fails is marked (error or mismatch) and never counts as a best. A point that faulted in step 2
   is marked failed ("crashed the GPU context in precompile").
   A fault in the timing process (a point the compile pass did not flag: these faults do not
   always recur) ends that process, not the op: the op's state so far (timed, failed and crashed
   points, the run it was at) is in a resume file it writes before every run, and a fresh timing
   process goes on from there. The fault is listed under `crashed` ("timing process, run"); a run
   that faulted as a whole is not run again: when it has several new kernel points each is first
   run alone in a fresh compile process (`isolate`, as in step 2) and the guilty ones are listed
   ("isolation, ...") and marked failed, then the others are run alone in the timing process; a
   fault while timing or running one kernel point names that point. A kernel point that faulted
   anywhere is never launched again, nor any assignment that holds it. At most --max-restarts (5)
   fresh processes an op; past that, the runs left are not done (`cut.gpu_context`) and one more
   process times end to end what was timed. None past --time-budget. Every op in --ops runs, each
   in a healthy timing process (one is kept while healthy, replaced after a fault).
4. per shared assignment, the best kernel points summed; the best combination of every shared
   assignment (and the solver's point, before them and again after them: `solver_fwd_bwd_ms` is the
   smaller, `solver_fwd_bwd_ms_each` both) timed end to end (forward+backward, do_bench median, the
   kernels unwrapped: `Op.plain`) and checked again. best = the fastest of those end to end;
   ratio = solver / best.

Each op's row (JSON under --out, a table printed last) has the solver's point and its times
(forward+backward, per kernel), the best point and its times, both ratios (end to end and of
the kernel sums), how many points were feasible and timed, the failed points, `crashed` (what
faulted the GPU: kernel, point, error, where; kernel null: a run that faulted as a whole),
`restarts` (fresh timing processes after faults) and `timing_processes`, and `exhaustive`: true
only when every feasible point of the op was timed or marked failed (`cut` says what stopped it:
--shared, --max-points, --time-budget, --e2e-top, gpu_context: the restarts ran out or the
solver's point faulted). The summary names every crash. `--merge` joins rows of one op swept in parts over disjoint --shared values
(exhaustive when the parts cover every shared assignment).

Tests only: RECC_SWEEP_CRASH="o_stages=2" makes a run at an assignment with these values fault
as CUDA's illegal address would, sticky (`_simulated_crash`); tests/test_tile_sweep.py. The dry
run with --jobs 1 runs the compile tasks and the timing in this process (a fresh process's healthy
context simulated: the fault cleared); with --jobs > 1 in spawned processes, as on a GPU.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import gc
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import pickle
import sys
import tempfile
import threading
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


# ---- a broken CUDA context ---------------------------------------------------------------------

# the texts of errors after which a process's CUDA context is broken (sticky: every later CUDA call
# in the process fails too); an out-of-memory or Triton's out-of-resources error is not one of them
_BROKEN_CONTEXT = ("illegal memory access", "illegal address", "cuda error", "acceleratorerror",
                   "unspecified launch failure", "misaligned address", "illegal instruction", "device-side assert")


def context_broken(error) -> bool:
    """Whether an exception (or its text) says that the process's CUDA context is broken."""
    text = (error if isinstance(error, str) else f"{type(error).__name__}: {error}").lower()
    return "out of memory" not in text and any(s in text for s in _BROKEN_CONTEXT)


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


class ContextBroken(RuntimeError):
    """The main process's CUDA context broke (at `where`: the assignment being run)."""

    def __init__(self, text: str, where: dict):
        super().__init__(text)
        self.where = where


# Tests only: RECC_SWEEP_CRASH="o_stages=2;dv_BV=32,dv_warps=4" (";" between alternatives) makes a
# run at an assignment holding all the values of one alternative raise an error that reads like
# CUDA's illegal-address error, and, as on a GPU, every later run, replay or end-to-end call of that
# process raise too. The dry run's in-process compile tasks clear it before and after each task
# (a fresh process's healthy context).
_SIMULATED = {}


def _simulated_crash(assignment: dict | None = None):
    spec = os.environ.get("RECC_SWEEP_CRASH")
    if not spec:
        return
    if assignment is not None and "broken" not in _SIMULATED:
        for part in spec.replace(" ", "").split(";"):
            want = dict(x.split("=", 1) for x in part.split(",") if x)
            if want and all(str(assignment.get(k)) == v for k, v in want.items()):
                _SIMULATED["broken"] = part
    if "broken" in _SIMULATED:
        raise RuntimeError(f"CUDA error: an illegal memory access was encountered "
                           f"(simulated, RECC_SWEEP_CRASH {_SIMULATED['broken']})")


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
        _simulated_crash()
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
        self.recorders, self.attrs = {}, {}
        for t in self.terms:
            attr = self.attrs[t.name] = f"{rec.name}_{KERNEL_GLOBALS[self.family][t.name]}"
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

    def release(self):
        """Drops this op's device tensors: its inputs and the recorded launches' arguments (the
        module's kernels, and so their Recorders, can outlive the op in Triton's caches). The timing
        process prints what it holds at each op's start."""
        for r in self.recorders.values():
            r.calls.clear()
        self.args, self.do = [], None

    def set(self, assignment: dict):
        self.overrides.clear()
        self.overrides.update(({"variant": "tile"} if self.family == "scan" else {}) | dict(assignment))

    def run(self, assignment: dict) -> list:
        """Forward + backward at `assignment`; the launches of the tuned kernels are recorded.
        Returns [(name, tensor)] of the outputs, final states and gradients."""
        from recc.signature import bind
        _simulated_crash(assignment)
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

    @contextlib.contextmanager
    def plain(self):
        """The module's own kernels in place of the Recorders for a while (end-to-end timing): a
        Recorder keeps every launch's arguments, so a do_bench loop through it held every iteration's
        tensors alive and each iteration allocated afresh from the device (the next candidate's run
        frees them into the caching allocator, so only the first end-to-end timing paid for it: the
        likely cause of gated DeltaNet's solver reading 3.25 ms on the H200 against a kernel sum of 1.60)."""
        # the scan's module caches the kernels it resolved per shape (_LAUNCHED): the Recorders, until
        # it is emptied; under a Recorder every iteration's tensors stayed alive and its H200 sweep ran out
        # of memory (136 GiB). Emptied on the way in and out, so each side resolves its own kernels.
        cache = getattr(self.module, "_LAUNCHED", {})
        cache.clear()
        for t, r in self.recorders.items():
            setattr(self.module, self.attrs[t], r.kernel)
        try:
            yield
        finally:
            cache.clear()
            for t, r in self.recorders.items():
                setattr(self.module, self.attrs[t], r)

    def fwd_bwd(self, assignment: dict):
        """A no-argument forward + backward at `assignment` (for end-to-end timing, under `plain`)."""
        from recc.signature import bind
        rec, m = self.rec, self.module
        out = rec.outputs[0].name

        def fn():
            _simulated_crash(assignment)
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


# ---- compile in parallel, each crash of the GPU context caught in a worker ----------------------

_WORKER_OPS = {}


def _compile_task(name: str, device: str, sizes: dict, assignments: list) -> dict:
    """In a worker: a forward+backward at each assignment (fills Triton's disk cache). An error that
    breaks the CUDA context stops the task at once: `crashed` = [its index, its text]; the
    assignments after it were not tried. Other errors are counted (the timing pass reports them)."""
    key = (name, device, tuple(sorted(sizes.items())))
    if key not in _WORKER_OPS:
        _WORKER_OPS[key] = Op(name, device, sizes)
    op, done, failed = _WORKER_OPS[key], 0, 0
    for i, a in enumerate(assignments):
        try:
            op.run(a)
            if device != "cpu":
                import torch
                torch.cuda.synchronize()        # an asynchronous fault is this assignment's, not the next one's
        except Exception as e:  # noqa: BLE001
            if context_broken(e):
                return {"done": done, "failed": failed, "crashed": [i, _error_text(e)]}
            failed += 1
        done += 1
    return {"done": done, "failed": failed, "crashed": None}


def _leaves(kind: str, value) -> bool:
    """Whether a worker's answer says its CUDA context is broken (the worker ends)."""
    return context_broken(value) if kind == "raised" else bool(isinstance(value, dict) and value.get("crashed"))


def _serve(conn):
    """A worker process: runs (fn, args) tasks sent on `conn` until None, or until one breaks its
    CUDA context (it answers, then ends: its slot's next task starts a fresh process)."""
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        fn, args = task
        try:
            answer = ("ok", fn(*args))
        except Exception as e:  # noqa: BLE001
            answer = ("raised", f"{type(e).__name__}: {str(e)[:500]}")
        conn.send(answer)
        if _leaves(*answer):
            return


class FreshProcesses:
    """`submit(fn, *args)` -> a future, run by one of `jobs` spawned worker processes. A worker is
    reused while its CUDA context is healthy and replaced by a fresh process after a task that
    broke it (or killed it), so every task starts in a healthy process (any Python 3)."""

    def __init__(self, jobs: int):
        self.ctx = multiprocessing.get_context("spawn")
        self.slots = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs))
        self.local, self.lock, self.workers = threading.local(), threading.Lock(), []

    def submit(self, fn, *args):
        return self.slots.submit(self._call, fn, args)

    def _call(self, fn, args):
        worker = getattr(self.local, "worker", None)
        if worker is None:
            conn, child = self.ctx.Pipe()
            proc = self.ctx.Process(target=_serve, args=(child,), daemon=True)
            proc.start()
            child.close()
            worker = self.local.worker = (proc, conn)
            with self.lock:
                self.workers.append(worker)
        proc, conn = worker
        try:
            conn.send((fn, args))
            kind, value = conn.recv()
        except (EOFError, OSError):                       # e.g. a segmentation fault
            proc.join(5)
            kind, value = "raised", f"WorkerDied: the worker process ended (exit code {proc.exitcode})"
        if kind == "raised" and value.startswith("WorkerDied") or _leaves(kind, value):
            self.local.worker = None
            self._stop(worker)
        if kind == "raised":
            raise RuntimeError(value)
        return value

    @staticmethod
    def _stop(worker):
        proc, conn = worker
        try:
            conn.send(None)
        except OSError:
            pass
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        conn.close()

    def shutdown(self):
        self.slots.shutdown(wait=True)
        for w in self.workers:
            if w[0].exitcode is None:
                self._stop(w)


class InProcess:
    """The dry run's stand-in for FreshProcesses (--jobs 1 on the CPU, where no CUDA context can
    break): each task runs here at once, the simulated crash (RECC_SWEEP_CRASH) cleared before and
    after it, as a fresh process would start healthy. Never used on a GPU."""

    def submit(self, fn, *args):
        future = concurrent.futures.Future()
        _SIMULATED.clear()
        try:
            future.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001
            future.set_exception(e)
        _SIMULATED.clear()
        return future

    def shutdown(self):
        pass


def alone(op: Op, shared: list, r: dict, t: str) -> dict:
    """Run `r`'s new point of kernel `t` alone: its own values on the run's base (the group's model best)."""
    own = [n for n in next(x.variables for x in op.terms if x.name == t) if n not in shared]
    return {**r["base"], **{n: r["assignment"][n] for n in own}}


def _key(a: dict) -> str:
    return json.dumps(a, sort_keys=True)


def precompile(op: Op, runs: list, shared: list, jobs: int, deadline: float, in_process: bool = False) -> dict:
    """The runs' kernels compiled by `jobs` worker processes (FreshProcesses; `in_process`: the dry
    run's InProcess). First the bases (the solver's point, the model's best of each shared assignment:
    every run of a group fills the other kernels' slots with its base), then the runs in tasks of up
    to 8. A task that breaks its worker's CUDA context names the assignment that did; the ones after
    it go to a fresh process, and a crashed run with several new kernel points is retried point by
    point (`alone`), each in a task of its own, to find the guilty ones. `crashed` (for `sweep`):
    bases {key: error}, runs {index: error}, alone {(index, kernel): error}, alone_ok {(index, kernel)}."""
    t0 = time.time()
    crashed = empty_crashes()
    out = {"seconds": 0.0, "runs": 0, "failed": 0, "crashed": crashed}
    if not runs:
        return out
    bases = [dict(op.solver)]
    for r in runs:
        if r["base"] not in bases:
            bases.append(r["base"])
    size = max(1, min(8, len(runs) // (jobs * 2) or 1))
    pool = InProcess() if in_process else FreshProcesses(jobs)
    done = failed = 0
    try:
        for phase in ("bases", "runs"):
            if phase == "bases":
                tasks = [[("base", _key(b), b)] for b in bases]
            else:
                if _key(op.solver) in crashed["bases"]:
                    print("  the solver's point crashed the GPU context: the runs are not compiled", flush=True)
                    break
                todo = [("run", i, r["assignment"]) for i, r in enumerate(runs) if _key(r["base"]) not in crashed["bases"]]
                tasks = [todo[i:i + size] for i in range(0, len(todo), size)]
            pending = {pool.submit(_compile_task, op.name, op.device, op.sizes, [a for _, _, a in c]): c for c in tasks}
            count, finished, shown = len(pending), 0, 0
            while pending:
                ready, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for f in ready:
                    task = pending.pop(f)
                    finished += 1
                    try:
                        res = f.result()
                    except Exception as e:  # noqa: BLE001
                        print(f"  compile task failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                        if not str(e).startswith("WorkerDied") or not task:
                            continue
                        if len(task) > 1:               # which run killed it: each again, alone
                            count += len(task)
                            for x in task:
                                pending[pool.submit(_compile_task, op.name, op.device, op.sizes, [x[2]])] = [x]
                            continue
                        res = {"done": 0, "failed": 0, "crashed": [0, str(e)]}
                    done, failed = done + res["done"], failed + res["failed"]
                    if not res["crashed"]:
                        crashed["alone_ok"].update(k for kind, k, _ in task if kind == "alone")
                        continue
                    i, text = res["crashed"]
                    kind, k, a = task[i]
                    crashed["alone_ok"].update(x for kd, x, _ in task[:i] if kd == "alone")
                    crashed[{"base": "bases", "run": "runs", "alone": "alone"}[kind]][k] = text
                    retry = [task[i + 1:]] if task[i + 1:] else []          # untried: to a fresh process
                    if kind == "run" and len(runs[k]["new"]) > 1:          # which new point is guilty
                        retry += [[("alone", (k, t), alone(op, shared, runs[k], t))] for t in runs[k]["new"]]
                    what = ("base" if kind == "base" else f"run {k} (new: {', '.join(runs[k]['new'])})"
                            if kind == "run" else f"run {k[0]}'s {k[1]} alone")
                    print(f"  CRASHED the GPU context: {what} {described(a)}: {text}; to fresh processes: "
                          f"{len(task) - i - 1} untried, {len(retry) - bool(task[i + 1:])} kernel points alone", flush=True)
                    count += len(retry)
                    for c in retry:
                        pending[pool.submit(_compile_task, op.name, op.device, op.sizes, [x for _, _, x in c])] = c
                if finished >= shown + max(1, count // 10) or not pending:
                    shown = finished
                    print(f"  compiled {finished}/{count} tasks ({phase}), {time.time() - t0:.0f} s", flush=True)
                if time.time() > deadline and pending:
                    print("  time budget: the remaining compile tasks are cancelled", flush=True)
                    for g in pending:
                        g.cancel()
                    break
            if time.time() > deadline:
                break
    finally:
        pool.shutdown()
    out.update(seconds=time.time() - t0, runs=done, failed=failed)
    return out


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


def new_state() -> dict:
    """An op's sweep so far, the resume file its timing processes hand on: kernel point -> ms (`times`),
    rel. err (`errors`), reason (`failed`); the row's `crashed`; `guilty`: kernel points that crashed
    the GPU context (never launched again, nor any assignment that holds one); `at`: the run to do
    next; `reference`: the solver's point ran and was timed; `e2e`: the end-to-end timings so far, in
    candidate order; `cut`: the time budget stopped the runs; `runs_stopped`: why the runs left are not
    done (the restarts ran out); `broken`: what crashed the last process (for the driver); `processes`:
    the timing processes it took."""
    return {"times": {}, "errors": {}, "failed": {}, "crashed": [], "guilty": {}, "at": 0, "reference": False,
            "e2e": [], "cut": False, "runs_stopped": None, "broken": None, "processes": 0}


def per_shared_of(op: Op, p: dict, times: dict, failed: dict) -> list:
    """Per selected group: the best timed point of each kernel, summed (fastest first)."""
    kpoint, out = p["kpoint"], []
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
            out.append({"shared": s, "point": {**s, **best}, "kernels_ms": parts,
                        "kernel_sum_ms": sum(parts.values()), "all_timed": complete})
    out.sort(key=lambda x: x["kernel_sum_ms"])
    return out


def sweep(op: Op, p: dict, args, deadline: float, crashes: dict | None, state: dict, save=lambda: None) -> dict:
    """Steps 3 and 4 of the module docstring for one op, in the timing process, from `state` (a
    `new_state()`, or what an earlier timing process left: it goes on where that one stopped), which
    it updates and `save`s before each run and end-to-end timing. `crashes`: what broke a CUDA context
    in `precompile` or in an earlier timing process; those assignments are never run here. A crash of
    this process's context ends it: `state["broken"]` says where (the driver, `sweep_op`, starts a
    fresh process)."""
    import torch
    dry = op.device == "cpu"
    sync = (lambda: None) if dry else torch.cuda.synchronize
    kernel_timer = make_timer(dry, args.kernel_warmup, args.kernel_rep)
    e2e_timer = make_timer(dry, args.warmup, args.rep)
    tol = args.tol or TOL[str(op.dtype).replace("torch.", "")]
    kpoint, runs = p["kpoint"], p["runs"]
    times, errors, failed, crashed, guilty = (state[k] for k in ("times", "errors", "failed", "crashed", "guilty"))
    crashes = crashes or empty_crashes()
    if _key(op.solver) in crashes["bases"]:
        raise RuntimeError(f"the solver's point crashed the GPU context in precompile: {crashes['bases'][_key(op.solver)]}")

    def time_new(names, a):
        for t in names:
            k = kpoint(t, a)
            if k in times:
                continue
            try:
                times[k] = kernel_timer(op.recorders[t].replay)
            except Exception as e:  # noqa: BLE001
                if context_broken(e):
                    raise ContextBroken(_error_text(e), {"kernel": t, "point": a, "while": "timing"}) from e
                failed[k] = f"error while timing: {type(e).__name__}: {str(e)[:200]}"

    def described_k(k):
        return f"{k[0]} {dict(zip(p['read'][k[0]], k[1]))}"

    def attempt(a, kernel=None):
        """(ok, reason, err): a run at `a` against the reference (`kernel`: the one point `a` tries alone)."""
        held = [k for t in op.terms if (k := kpoint(t.name, a)) in guilty]
        if held:
            return False, f"not run: it holds {described_k(held[0])}, which crashed the GPU context", None
        try:
            got = op.run(a)
            sync()
        except Exception as e:  # noqa: BLE001
            if context_broken(e):
                raise ContextBroken(_error_text(e), {"kernel": kernel, "point": a,
                                                     "while": "run alone" if kernel else "run"}) from e
            return False, f"error: {_error_text(e)}", None
        err, which = rel_err(got, ref)
        if not err < tol:
            return False, f"mismatch: {which} rel err {err:.2e} against the solver's point", err
        return True, "", err

    def crash(k, error, a, where):
        failed[k] = f"crashed the GPU context in {where}: {error}"
        crashed.append({"kernel": k[0], "point": dict(zip(p["read"][k[0]], k[1])), "error": error,
                        "assignment": a, "where": where})
        print(f"  {op.name}: {described_k(k)} CRASHED the GPU context ({where}): {error}", flush=True)

    def run_one(i, r):
        """Run `r` (index i): checked, its new points timed; a failing run, or one that crashed a
        process or holds a guilty point, split point by point (each alone on the group's base)."""
        a = r["assignment"]
        base_crash = crashes["bases"].get(_key(r["base"]))
        if base_crash:                          # every run of the group holds the crashing base
            for t in r["new"]:
                failed[kpoint(t, a)] = f"not run: its group's base point crashed the GPU context in precompile: {base_crash}"
            return
        run_crash = crashes["runs"].get(i)
        here = crashes.get("where", {}).get(i) == "timing process"      # its entry is in `crashed` already
        todo = [t for t in r["new"] if kpoint(t, a) not in times and kpoint(t, a) not in failed]
        if run_crash and len(r["new"]) == 1:    # the run is its one new point alone on the base
            if here:
                failed[kpoint(r["new"][0], a)] = f"crashed the GPU context in the timing process: {run_crash}"
            else:
                crash(kpoint(r["new"][0], a), run_crash, a, "precompile")
            return
        held = any(kpoint(t.name, a) in guilty for t in op.terms)
        if not run_crash and not held:
            ok, reason, err = attempt(a)
            if ok:
                for t in todo:
                    errors[kpoint(t, a)] = err
                time_new(todo, a)
                return
        named = False
        for t in todo:                          # split: each new point alone, the model's best elsewhere
            one, k = alone(op, p["shared"], r, t), kpoint(t, a)
            if run_crash and (i, t) in crashes["alone"]:
                crash(k, crashes["alone"][(i, t)], one, "isolation, alone in a fresh process after the timing "
                      "process crashed" if here else "precompile")
                named = True
                continue
            if k in guilty:
                failed[k] = f"crashed the GPU context: {guilty[k]}"
                continue
            if run_crash and (i, t) not in crashes["alone_ok"]:
                failed[k] = f"not run: its run crashed the GPU context ({run_crash}), not retried alone"
                continue
            ok1, reason1, err1 = attempt(one, t)
            if ok1:
                errors[k] = err1
                time_new([t], one)
            else:
                failed[k] = reason1
                print(f"  {op.name}: {described_k(k)} FAILED {reason1}", flush=True)
        if run_crash and not named and not here:    # no point crashed alone: the combination did
            crashed.append({"kernel": None, "point": a, "new": r["new"], "error": run_crash, "assignment": a,
                            "where": "precompile, as a run (none of its new points alone)"})
            print(f"  {op.name}: run {described(a)} CRASHED the GPU context (precompile), none of its new points "
                  f"({', '.join(r['new'])}) alone: {run_crash}", flush=True)

    def on_broken(e, i):
        """Record a crash of this process's context (sticky: nothing more runs here) for the driver."""
        where, t = e.where, e.where["kernel"]
        entry = {"kernel": t, "point": dict(zip(p["read"][t], kpoint(t, where["point"])[1])) if t else where["point"],
                 "error": str(e), "assignment": where["point"], "where": f"timing process, {where['while']}"}
        if t:                                   # the kernel point is named: never launched again
            k = kpoint(t, where["point"])
            failed[k] = f"crashed the GPU context in the timing process ({where['while']}): {e}"
            guilty[k] = str(e)
        elif i is not None and where["point"] == runs[i]["assignment"]:
            entry["new"] = runs[i]["new"]
        crashed.append(entry)
        state["broken"] = {"run": i, "kernel": t, "point": where["point"], "while": where["while"], "error": str(e)}
        at = "" if i is None else f", run {i} of {len(runs)}"
        print(f"  {op.name}: the GPU context broke in this process ({where['while']} {described(where['point'])}{at}): "
              f"{e}; this process ends, a fresh one goes on", flush=True)
        save()
        return state

    # the reference: the solver's point (each process runs it again; times kept from earlier processes)
    try:
        ref = [(n, v.detach().clone()) for n, v in op.run(op.solver)]
        sync()
        time_new([t.name for t in op.terms], op.solver)
    except Exception as e:  # noqa: BLE001
        if not context_broken(e):
            raise
        crashed.append({"kernel": None, "point": op.solver, "error": _error_text(e), "assignment": op.solver,
                        "where": "timing process, the solver's point"})
        state["broken"] = {"reference": True, "run": None, "kernel": None, "point": op.solver,
                           "while": "the solver's point", "error": _error_text(e)}
        save()
        return state
    state["reference"] = True
    for t in op.terms:
        errors[kpoint(t.name, op.solver)] = 0.0

    stop = deadline - sum(g["selected"] for g in p["groups"]) * COST["e2e"] - 15      # room for the end-to-end timings and the JSON
    if state["at"] and state["at"] < len(runs) and not state["e2e"] and not state["runs_stopped"]:
        print(f"  {op.name}: resumed at run {state['at']} of {len(runs)} ({len(times)} kernel points timed so far)",
              flush=True)
    for i in range(state["at"], len(runs)):
        if state["e2e"] or state["runs_stopped"]:
            break
        if time.time() > stop:
            state["cut"] = True
            print(f"  time budget: stopped after {i} of {len(runs)} runs", flush=True)
            break
        state["at"] = i
        save()
        try:
            run_one(i, runs[i])
        except ContextBroken as e:          # sticky: nothing more can run in this process
            return on_broken(e, i)
        state["at"] = i + 1
        if (i + 1) % 50 == 0:
            print(f"  {op.name}: {i + 1}/{len(runs)} runs, {len(times)} kernel points timed", flush=True)

    # 4. end to end: the solver's point, the best combination of each group, the solver's point again
    per_shared = per_shared_of(op, p, times, failed)
    candidates = ([("solver", op.solver)] + [("shared", c["point"]) for c in per_shared[:args.e2e_top or None]]
                  + [("solver again", op.solver)])
    for j, (what, a) in enumerate(candidates):
        if j < len(state["e2e"]):
            continue
        entry = {"what": what, "point": a, "fwd_bwd_ms": None, "error": "not timed: its process died"}
        state["e2e"].append(entry)
        save()
        try:
            ok, reason, err = attempt(a)
            if not ok:
                print(f"  {op.name}: end to end at {a}: {reason}", flush=True)
                entry["error"] = reason
                continue
            fn = op.fwd_bwd(a)
            with op.plain():
                try:
                    fn()
                    sync()
                    ms = e2e_timer(fn)
                except Exception as e:  # noqa: BLE001
                    if context_broken(e):
                        raise ContextBroken(_error_text(e), {"kernel": None, "point": a, "while": "end to end"}) from e
                    raise
        except ContextBroken as e:
            entry["error"] = f"crashed the GPU context: {e}"
            return on_broken(e, None)
        del entry["error"]
        entry.update(fwd_bwd_ms=ms, rel_err=err)
    save()
    return state


def build_row(op: Op, p: dict, args, state: dict, restarts: int = 0, ended: str | None = None) -> dict:
    """An op's result row from its sweep's final `state` (no GPU needed). `ended`: why its sweep stopped
    short (a crash at the solver's point, the restarts or the time budget spent at a crash)."""
    kpoint = p["kpoint"]
    times, errors, failed, crashed = state["times"], state["errors"], state["failed"], state["crashed"]
    tol = args.tol or TOL[str(op.dtype).replace("torch.", "")]
    per_shared = per_shared_of(op, p, times, failed)
    e2e = state["e2e"]
    for c in per_shared:
        c["fwd_bwd_ms"] = next((x["fwd_bwd_ms"] for x in e2e if x["what"] == "shared" and x["point"] == c["point"]), None)
    solver_each = [x["fwd_bwd_ms"] for x in e2e if x["what"] in ("solver", "solver again")]
    solver_timed = [x for x in solver_each if x is not None]
    solver_ms = min(solver_timed) if solver_timed else None
    timed_e2e = [x for x in e2e if x["fwd_bwd_ms"] is not None]
    best = min(timed_e2e, key=lambda x: x["fwd_bwd_ms"]) if timed_e2e else None
    solver_parts = {t.name: times.get(kpoint(t.name, op.solver)) for t in op.terms}
    solver_sum = None if None in solver_parts.values() else sum(solver_parts.values())
    best_parts = {t.name: times.get(kpoint(t.name, best["point"])) for t in op.terms} if best else {}
    best_kernels = per_shared[0] if per_shared else None
    attempted = all(kpoint(t.name, {**g["shared"], **o}) in times or kpoint(t.name, {**g["shared"], **o}) in failed
                    for g in p["groups"] if g["selected"] for t in op.terms for o in g["own"][t.name])
    gpu_cut = ended or state["runs_stopped"]
    exhaustive = (p["complete"] and not state["cut"] and not gpu_cut and attempted
                  and (args.e2e_top or math.inf) >= len(per_shared))
    points = [{"kernel": k[0], "point": dict(zip(p["read"][k[0]], k[1])), "ms": ms, "rel_err": errors.get(k)}
              for k, ms in times.items()]
    points += [{"kernel": k[0], "point": dict(zip(p["read"][k[0]], k[1])), "ms": None, "failed": why}
               for k, why in failed.items()]
    return {
        "op": op.name, "family": op.family, "sizes": op.sizes, "dtype": str(op.dtype).replace("torch.", ""),
        "hardware_model": op.hw.name,
        "solver": op.solver, "solver_fwd_bwd_ms": solver_ms, "solver_fwd_bwd_ms_each": solver_each,
        "solver_kernels_ms": solver_parts, "solver_kernel_sum_ms": solver_sum,
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
                  "end_to_end": len(timed_e2e), "crashed": len(crashed)},
        "failed": [x for x in points if x.get("failed")],
        "crashed": crashed,
        "restarts": restarts, "timing_processes": state["processes"],
        "tolerance": tol, "max_rel_err_passed": max((e for e in errors.values() if e is not None), default=None),
        "exhaustive": bool(exhaustive),
        "cut": {"shared": not all(g["selected"] for g in p["groups"]), "max_points": p["capped"],
                "time_budget": state["cut"], "e2e_top": (args.e2e_top or math.inf) < len(per_shared),
                "untimed_points": not attempted, "gpu_context": gpu_cut},
        "shared_selected": p["selected"],
        "per_shared": per_shared, "end_to_end": e2e, "points": points,
    }


# ---- the timing process, a fresh one after each crash -------------------------------------------

_WORKER_PLANS = {}


def _op_key(name: str, device: str, sizes: dict) -> tuple:
    return name, device, tuple(sorted(sizes.items()))


def _plan_key(name: str, device: str, sizes: dict, filt: dict, max_points) -> tuple:
    return _op_key(name, device, sizes), _key({k: sorted(v) for k, v in filt.items()}), max_points


def _runs_digest(p: dict) -> str:
    return hashlib.sha256(_key([r["assignment"] for r in p["runs"]]).encode()).hexdigest()[:16]


def _save_state(path, state: dict):
    path = Path(path)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(pickle.dumps(state))
    os.replace(tmp, path)


def _timing_task(name: str, device: str, sizes: dict, filt: dict, max_points, args, deadline: float,
                 crashes: dict, path: str, digest: str) -> dict:
    """In the timing process: the op's sweep (`sweep`) from the state in the resume file `path`, saved
    back there before each run and end-to-end timing (so a process that dies leaves where it was).
    Returns {"crashed": the error that broke this process's CUDA context, or None}: FreshProcesses
    replaces a process whose context broke."""
    key = _op_key(name, device, sizes)
    for k in [k for k in _WORKER_OPS if k != key]:       # an earlier op's inputs and module
        _WORKER_OPS.pop(k).release()
    if device != "cpu":
        import torch
        gc.collect()
        torch.cuda.empty_cache()
        print(f"  {name}: timing process holds {torch.cuda.memory_allocated() / 2**30:.2f} GiB at the start", flush=True)
    if key not in _WORKER_OPS:
        _WORKER_OPS[key] = Op(name, device, sizes)
    op = _WORKER_OPS[key]
    pkey = _plan_key(name, device, sizes, filt, max_points)
    if pkey not in _WORKER_PLANS:
        _WORKER_PLANS.clear()
        _WORKER_PLANS[pkey] = plan(op, filt, max_points)
    p = _WORKER_PLANS[pkey]
    if _runs_digest(p) != digest:
        raise RuntimeError(f"{name}: the timing process's plan is not the driver's")
    state = pickle.loads(Path(path).read_bytes())
    state["processes"] += 1
    sweep(op, p, args, deadline, crashes, state, lambda: _save_state(path, state))
    _save_state(path, state)
    for r in op.recorders.values():             # the last run's launches
        r.calls.clear()
    if device != "cpu" and not state["broken"]:
        import torch
        gc.collect()
        torch.cuda.empty_cache()                # room for the next op's compile workers
    return {"crashed": state["broken"]["error"] if state["broken"] else None}


def empty_crashes() -> dict:
    """`precompile`'s record of crashes (and `sweep_op`'s, of the timing process's: `where` "timing process")."""
    return {"bases": {}, "runs": {}, "alone": {}, "alone_ok": set(), "where": {}}


def isolate(op: Op, p: dict, i: int, crashes: dict, guilty: dict, jobs: int, in_process: bool):
    """Run `i` crashed the timing process as a whole: each of its new kernel points alone on the
    group's base (`alone`), each in a fresh compile process, to name the guilty ones (as `precompile`
    does): into crashes["alone"] / ["alone_ok"] and `guilty`."""
    r, kpoint = p["runs"][i], p["kpoint"]
    pool = InProcess() if in_process else FreshProcesses(min(max(1, jobs), len(r["new"])))
    try:
        futures = {t: pool.submit(_compile_task, op.name, op.device, op.sizes, [alone(op, p["shared"], r, t)])
                   for t in r["new"]}
        for t, f in futures.items():
            try:
                res = f.result()
            except Exception as e:  # noqa: BLE001
                text = str(e)
                res = {"crashed": [0, text] if context_broken(text) or text.startswith("WorkerDied") else None}
            if res["crashed"]:
                crashes["alone"][(i, t)] = res["crashed"][1]
                guilty[kpoint(t, r["assignment"])] = res["crashed"][1]
            else:
                crashes["alone_ok"].add((i, t))
    finally:
        pool.shutdown()
    named = [t for t in r["new"] if (i, t) in crashes["alone"]]
    print(f"  {op.name}: run {i}'s new points alone, each in a fresh process: "
          + (f"{', '.join(named)} crashed (never run again)" if named else "none crashed (the combination did)"),
          flush=True)


def sweep_op(op: Op, p: dict, args, deadline: float, crashes: dict | None, timing, filt: dict,
             in_process: bool) -> dict:
    """One op's timing (`sweep`) in the process `timing` holds (FreshProcesses(1); the dry run's
    InProcess with --jobs 1), resumed in a fresh process after each crash of its CUDA context, from
    the resume file the last one left: the run that crashed is recorded and never run again; when
    it had several new kernel points, `isolate` names the guilty ones first, unless less than 90 s
    of the time budget is left (never run again either, nor anything that holds them). At most --max-restarts restarts (then one more process for the
    end-to-end timings of what was timed), none past the deadline. Returns the row (`build_row`)."""
    kpoint, runs = p["kpoint"], p["runs"]
    crashes = crashes or empty_crashes()
    crashes.setdefault("where", {})
    if _key(op.solver) in crashes["bases"]:
        raise RuntimeError(f"the solver's point crashed the GPU context in precompile: {crashes['bases'][_key(op.solver)]}")
    state = new_state()
    for (i, t), text in crashes["alone"].items():       # precompile's guilty points
        state["guilty"][kpoint(t, runs[i]["assignment"])] = text
    for i, text in crashes["runs"].items():
        if len(runs[i]["new"]) == 1:
            state["guilty"][kpoint(runs[i]["new"][0], runs[i]["assignment"])] = text
    if in_process:
        _WORKER_OPS[_op_key(op.name, op.device, op.sizes)] = op
        _WORKER_PLANS[_plan_key(op.name, op.device, op.sizes, filt, args.max_points)] = p
    folder = Path(tempfile.mkdtemp(prefix=f"recc_sweep_{op.name}_"))
    path = folder / "resume.pkl"
    restarts, ended, digest = 0, None, _runs_digest(p)
    try:
        while True:
            state["broken"] = None
            _save_state(path, state)
            error = None
            try:
                timing.submit(_timing_task, op.name, op.device, op.sizes, filt, args.max_points, args, deadline,
                              crashes, str(path), digest).result()
            except Exception as e:  # noqa: BLE001
                error = str(e)
            state = pickle.loads(path.read_bytes())
            if error and not state["broken"]:
                if not (context_broken(error) or error.startswith("WorkerDied")):
                    raise RuntimeError(error)       # e.g. the solver's point fails: the op's error
                state["broken"] = _died(op, p, state, error)
            b = state["broken"]
            if not b:
                break
            restarts += 1
            if b.get("reference"):
                ended = f"the solver's point crashed the GPU context in the timing process: {b['error']}"
                break
            if time.time() > deadline:
                ended = f"the time budget was spent at a crash: {b['error']}"
                break
            if restarts > args.max_restarts:
                if state["e2e"] or state["runs_stopped"]:
                    ended = f"{restarts} crashes, more than --max-restarts {args.max_restarts}; the last: {b['error']}"
                    break
                state["runs_stopped"] = (f"{restarts} crashes, more than --max-restarts {args.max_restarts}: the "
                                         f"runs from {state['at']} on not done; the last: {b['error']}")
                print(f"  {op.name}: {state['runs_stopped']}; a fresh process times end to end what was timed",
                      flush=True)
                continue
            i = b["run"]
            if i is not None and b["kernel"] is None and b["point"] == runs[i]["assignment"]:
                crashes["runs"][i], crashes["where"][i] = b["error"], "timing process"
                if len(runs[i]["new"]) == 1:
                    state["guilty"][kpoint(runs[i]["new"][0], runs[i]["assignment"])] = b["error"]
                elif deadline - time.time() > 90:
                    isolate(op, p, i, crashes, state["guilty"], args.jobs, in_process)
                else:                           # its new points: "not retried alone"
                    print(f"  {op.name}: run {i}'s new points not isolated: the time budget is nearly spent", flush=True)
            print(f"  {op.name}: restart {restarts} of at most {args.max_restarts}: a fresh process goes on at "
                  + (f"run {state['at']} of {len(runs)}" if not state["e2e"] else "the end-to-end timings"), flush=True)
    finally:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    if ended:
        print(f"  {op.name}: the sweep stops here: {ended}", flush=True)
    return build_row(op, p, args, state, restarts, ended)


def _died(op: Op, p: dict, state: dict, error: str) -> dict:
    """The timing process died (or raised a broken context's error past `sweep`): what it was at, from
    the resume file it left, recorded as `sweep`'s on_broken would."""
    runs, e2e = p["runs"], state["e2e"]
    entry = {"kernel": None, "error": error[:300], "where": "timing process, its process ended"}
    if not state["reference"]:
        b = {"reference": True, "run": None, "kernel": None, "point": op.solver, "while": "the solver's point"}
    elif e2e and e2e[-1]["fwd_bwd_ms"] is None and e2e[-1].get("error", "").startswith("not timed"):
        e2e[-1]["error"] = f"crashed the GPU context: {error[:300]}"
        b = {"run": None, "kernel": None, "point": e2e[-1]["point"], "while": "end to end"}
    elif state["at"] < len(runs):
        b = {"run": state["at"], "kernel": None, "point": runs[state["at"]]["assignment"], "while": "run"}
        entry["new"] = runs[state["at"]]["new"]
    else:
        b = {"run": None, "kernel": None, "point": None, "while": "between runs"}
    entry.update(point=b["point"], assignment=b["point"])
    state["crashed"].append(entry)
    b["error"] = error[:300]
    print(f"  {op.name}: the timing process ended ({b['while']} {described(b['point'])}): {error[:300]}", flush=True)
    return b


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


def crash_lines(rows: list) -> str:
    """The summary's lines naming what crashed a CUDA context (the rows' `crashed`)."""
    lines = []
    for r in rows:
        for c in r.get("crashed", []):
            what = f"{c['kernel']} " if c["kernel"] else f"run (new: {', '.join(c.get('new', []))}) " if c.get("new") else ""
            lines.append(f"{r['op']}: CRASHED the GPU context ({c['where']}): {what}{described(c['point'])}: {c['error']}")
    return "\n".join(lines or ["no point crashed the GPU context"])


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
                   crashed=[x for r in rs for x in r.get("crashed", [])], restarts=sum(r.get("restarts", 0) for r in rs),
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
    print(crash_lines(rows))
    print(f"\nwrote {target}")
    return 0


CRASHES = """\
GPU faults (an illegal address breaks a process's CUDA context for good): the kernels are compiled
first in --jobs worker processes, where a faulting run is named (its new kernel points retried
alone, each in a fresh process, to name the guilty one) and never run by the timing process. The
timing runs in a process of its own: a fault there ends that process, not the sweep; a fresh one
goes on from a resume file with what was timed, the faulting run (or kernel point) listed under
`crashed` and never run again (nor anything holding a kernel point that faulted; a run's new
points are isolated first, as in the compile pass). At most --max-restarts fresh processes an op,
then what was timed is timed end to end (`cut.gpu_context`); every op in --ops runs. The row
says `restarts`; the summary names every crash. See the module docstring, benchmarks/README.md."""


def described(a: dict | None) -> str:
    return "-" if a is None else " ".join(f"{k}={v}" for k, v in a.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=CRASHES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of: {', '.join(OPS)}")
    ap.add_argument("--shared", default=None,
                    help="only these shared values, e.g. 'BT=32,64;BKS=64' (the row is then not exhaustive)")
    ap.add_argument("--max-points", type=int, default=None,
                    help="per kernel and shared assignment, time only the model's best N points (not exhaustive)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds for the whole command; work left when it runs out is skipped (not exhaustive)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="compile processes (default: the CPU count, at most 16; the dry run: 1, the compile tasks "
                         "and the timing in this process, where nothing can fault the GPU; > 1: processes, as on a GPU)")
    ap.add_argument("--warmup", type=int, default=25, help="end to end: do_bench warmup (ms)")
    ap.add_argument("--rep", type=int, default=100, help="end to end: do_bench rep (ms)")
    ap.add_argument("--kernel-warmup", type=int, default=2, help="per kernel point: do_bench warmup (ms)")
    ap.add_argument("--kernel-rep", type=int, default=10, help="per kernel point: do_bench rep (ms)")
    ap.add_argument("--max-restarts", type=int, default=5,
                    help="per op, fresh timing processes after crashes of the GPU context (then one more times end "
                         "to end what was timed; the runs left are not done)")
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
        prepared.append((op, p, est, filt))
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
    total = sum(e["total_s"] for _, _, e, _ in prepared)
    print(f"estimated total {total / 60:.1f} min (device time, machine start not counted)", flush=True)
    if args.estimate:
        return 0

    rows, errors = [], []
    in_process = args.dry_run and args.jobs <= 1
    timing = InProcess() if in_process else FreshProcesses(1)      # the timing process, fresh after a crash
    try:
        for op, p, est, filt in prepared:
            if time.time() > deadline:
                print(f"{op.name}: time budget spent, skipped", flush=True)
                continue
            print(f"== {op.name}", flush=True)
            c = {"seconds": 0.0, "runs": 0, "failed": 0, "crashed": None}
            if device == "cuda" or args.dry_run:
                # the dry run: the compile task on the first run only (nothing compiles under the interpreter),
                # in this process with --jobs 1 (the CPU has no CUDA context to break; on a GPU always processes)
                runs = p["runs"][:max(1, args.jobs)] if args.dry_run else p["runs"]
                c = precompile(op, runs, p["shared"], args.jobs,
                               started + 0.6 * (deadline - started) if args.time_budget else math.inf,
                               in_process=in_process)
                n = sum(len(v) for k, v in (c["crashed"] or {}).items() if k not in ("alone_ok", "where"))
                print(f"  compiled: {c['runs']} runs in {c['seconds']:.0f} s ({c['failed']} raised; the timing pass "
                      f"reports them; {n} crashed the GPU context, never run in the timing process)", flush=True)
            t0 = time.time()
            try:
                row = sweep_op(op, p, args, deadline, c["crashed"], timing, filt, in_process)
            except Exception as e:  # noqa: BLE001 - e.g. the solver's own point fails: the other ops go on
                import traceback
                traceback.print_exc()
                errors.append({"op": op.name, "error": f"{type(e).__name__}: {str(e)[:500]}"})
                continue
            row["seconds"] = {"compile": c["seconds"], "time": time.time() - t0}
            row["estimate"] = est
            row["limits"] = {"shared": args.shared, "max_points": args.max_points, "time_budget": args.time_budget,
                             "e2e_top": args.e2e_top, "max_restarts": args.max_restarts}
            rows.append(row)
            print(f"  {op.name}: solver {row['solver_fwd_bwd_ms']} ms, best {row['best_fwd_bwd_ms']} ms, "
                  f"ratio {row['ratio_fwd_bwd']}, exhaustive {row['exhaustive']}, {row['restarts']} restarts, "
                  f"{time.time() - t0:.0f} s", flush=True)
    finally:
        timing.shutdown()
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
    print(crash_lines(rows))
    for e in errors:
        print(f"{e['op']}: FAILED {e['error']}")
    print(f"\nwrote {out}  ({meta['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
