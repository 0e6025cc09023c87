#!/usr/bin/env python3
"""Memory traffic of the PyTorch glue around a generated op's Triton kernels, at the main shape.

    python benchmarks/glue_traffic.py [--specs delta_net,gated_delta_net,...] [--strategy chunked]
                                      [--B 4 --T 4096 --H 16 --K 128 --V 128] [--dtype bf16]
                                      [--bw 3.0] [--detail] [--json out.json]

Runs the op's forward and backward (the public function, eager path, as a benchmark calls it)
on `meta` tensors at the full shape, so nothing is computed and every size is exact. The
module's Triton kernels are replaced by stand-ins that record the tensors they are given;
every other aten op (what torch.autograd and the host code run around the kernels) is
recorded by a TorchDispatchMode with the bytes it moves:

* an op reads each tensor argument and writes each result once; a stride-0 (expanded)
  dimension counts once; views (view, expand, select, unsqueeze, as_strided, detach, ...)
  and allocations (empty, empty_like, ...) move nothing;
* an in-place op (`add_`) reads and writes its first argument; `copy_`/`zero_`/`fill_`
  only write it.

Prints, per spec, a table of the glue ops by phase (forward and backward with gradients; the
forward under torch.no_grad, as benchmarks time it: `inference`) and by the line of
the generated module that issued them (`--detail`: one row per aten op), with count, MB and
microseconds at `--bw` TB/s, then the glue total against the kernels' own traffic (each
kernel's tensor arguments once: a lower bound; kernels reread some of them). The tile
choice is the H100 model's (`recc.tiles`, preset h100), as on the GPU. `--host-time N`
also times the op's forward+backward on CPU tensors of a small shape (B=1, T=64, H=2, K=V=16),
kernels stubbed: the host's Python and aten dispatch per call, kernel launches excluded.
"""
from __future__ import annotations

import argparse
import json
import linecache
import os
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import recc  # noqa: E402
from recc.tiles import launch_shape  # noqa: E402
from oracle import full_shape  # noqa: E402

SPECS = ("delta_net", "gated_delta_net", "delta_product", "gla", "simple_gla", "mlstm")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
aten = torch.ops.aten
FREE = {  # views and allocations: no traffic
    "view", "_unsafe_view", "expand", "select", "unsqueeze", "squeeze", "as_strided", "detach", "alias",
    "slice", "t", "transpose", "permute", "_reshape_alias", "reshape", "empty", "empty_like", "empty_strided",
    "new_empty", "new_empty_strided", "lift_fresh", "split", "unbind", "_to_copy_noop", "is_same_size",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "resolve_conj", "resolve_neg", "view_as",
    "_local_scalar_dense", "set_",
}
WRITE_ONLY_FIRST = {"copy_", "zero_", "fill_", "normal_", "uniform_"}


def span_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses (stride-0 dims once)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


def op_bytes(func, args, kwargs, out) -> int:
    name = func.overloadpacket.__name__
    if name in FREE:
        return 0
    ins = list(_tensors(args)) + list(_tensors(kwargs))
    outs = list(_tensors(out))
    if name in WRITE_ONLY_FIRST:
        return span_bytes(ins[0]) + sum(span_bytes(t) for t in ins[1:])
    if name.endswith("_"):  # in place: first argument read and written (it is also the result)
        return sum(span_bytes(t) for t in ins) + span_bytes(ins[0])
    return sum(span_bytes(t) for t in ins) + sum(span_bytes(t) for t in outs)


class Recorder(TorchDispatchMode):
    """Records (phase, where, aten op, bytes) for every op dispatched below autograd."""

    def __init__(self, module_file: str):
        super().__init__()
        self.module_file = module_file
        self.phase = "forward"
        self.rows = []

    def where(self) -> str:
        """The innermost line of the generated module (or of recc) on the Python stack."""
        fallback = "autograd engine / caller"
        for frame in reversed(traceback.extract_stack()):
            if frame.filename == self.module_file:
                text = (linecache.getline(frame.filename, frame.lineno) or "").strip()
                return f"{frame.name}: {text[:90]}"
            if "/recc/" in frame.filename and fallback.startswith("autograd"):
                fallback = f"recc.{Path(frame.filename).stem}.{frame.name}"
        return fallback

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        moved = op_bytes(func, args, kwargs, out)
        if moved:
            self.rows.append((self.phase, self.where(), str(func.overloadpacket.__name__), moved))
        return out


class KernelStub:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kw)` records the tensors."""

    def __init__(self, name: str, log: list, recorder: Recorder):
        self.name, self.log, self.recorder = name, log, recorder

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            seen = {}
            for t in list(_tensors(args)) + list(_tensors(kwargs)):
                seen[id(t)] = t
            self.log.append((self.recorder.phase, self.name, sum(span_bytes(t) for t in seen.values())))
        return launch


def dealias_meta(results: list, inputs: tuple) -> list:
    """recc.runtime.dealias for meta tensors (their data_ptr is 0): storages told apart by identity."""
    key = lambda x: x.untyped_storage()._cdata
    seen = {key(x) for x in inputs if x is not None and x.numel()}
    out = []
    for r in results:
        if r.numel():
            if key(r) in seen:
                r = r.clone()
            seen.add(key(r))
        out.append(r)
    return out


def measure(spec: str, strategy: str, B: int, T: int, H: int, dims: dict, dtype: torch.dtype,
            host_reps: int = 0, host_shape: tuple = (1, 64, 2, 16)):
    """(recorded glue ops, kernel launches, host us per forward+backward or None)."""
    path = Path(spec) if spec.endswith(".rec") else ROOT / "specs" / f"{spec}.rec"
    rec = recc.load_spec(path)
    op = recc.load(path, strategy=strategy)
    module = op.module
    recorder = Recorder(module.__file__)
    kernels = []
    for name in dir(module):
        if name.endswith("_kernel") and hasattr(getattr(module, name), "__getitem__"):
            setattr(module, name, KernelStub(name, kernels, recorder))
    module._kernels_available = lambda device: True
    module._eager = lambda tensors: True   # the eager path, as outside a dispatch mode
    module._dealias = dealias_meta
    if hasattr(module, "_launch_tiles") and not hasattr(module, "_glue_traffic"):  # the GPU's choice
        real = module._launch_tiles
        module._launch_tiles = lambda family, d, device, key, **kw: real(family, d, "h100", key, **kw)
    module._glue_traffic = True

    # the family's K, V are the spec's dims of those names (mamba2: N, P); other free dims get K
    named = {v: dims[k] for k, v in launch_shape(rec, strategy)[0].items() if k in dims and isinstance(v, str)}
    dims = {d: named.get(d, dims.get(d, dims["K"])) for d in rec.free_dims}

    def step_on(device, B, T, H, dims, grad=True):
        sizes = {**rec.fixed_dims, **dims}
        make = torch.empty if device == "meta" else torch.randn
        args = [make(full_shape(rec, (B, T, H), d, sizes), device=device, dtype=dtype).requires_grad_(grad)
                for d in rec.inputs]
        args += [make(full_shape(rec, (H,), d, sizes), device=device, dtype=dtype).requires_grad_(grad)
                 for d in rec.params]
        if not grad:
            return lambda: op(*args)

        def step():
            recorder.phase = "forward"
            out = op(*args)[0]
            out = out[0] if isinstance(out, tuple) else out
            recorder.phase = "backward"
            torch.autograd.backward(out, torch.empty_like(out))
        return step

    with recorder:
        step_on("meta", B, T, H, dims)()
        infer = step_on("meta", B, T, H, dims, grad=False)
        recorder.phase = "inference"
        with torch.no_grad():
            infer()
    kernels = list(kernels)  # the main shape's launches
    host_us = None
    if host_reps:  # real CPU tensors at a small shape: aten ops cost what they cost on the host
        b, t, h, d = host_shape
        step = step_on("cpu", b, t, h, {k: d for k in dims})
        for _ in range(10):
            step()
        begin = time.perf_counter()
        for _ in range(host_reps):
            step()
        host_us = (time.perf_counter() - begin) / host_reps * 1e6
    return recorder.rows, kernels, host_us


def summarise(spec, rows, kernels, bw, detail):
    mb = lambda b: b / 1e6
    us = lambda b: b / (bw * 1e12) * 1e6
    print(f"\n== {spec}")
    result = {"spec": spec}
    for phase in ("forward", "backward", "inference"):
        groups = defaultdict(lambda: [0, 0])
        for ph, where, name, moved in rows:
            if ph != phase:
                continue
            key = (where, name) if detail else (where,)
            groups[key][0] += 1
            groups[key][1] += moved
        print(f"  {phase}")
        print(f"    {'where (generated module line) / aten op':104s} {'count':>5s} {'MB':>9s} {'us':>8s}")
        for key, (count, moved) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
            label = key[0] + (f"  [{key[1]}]" if detail else "")
            print(f"    {label[:104]:104s} {count:5d} {mb(moved):9.1f} {us(moved):8.1f}")
        glue = sum(m for ph, _, _, m in rows if ph == phase)
        kern = sum(m for ph, _, m in kernels if ph == phase)
        nk = sum(1 for ph, _, _ in kernels if ph == phase)
        print(f"    glue total {mb(glue):9.1f} MB {us(glue):8.1f} us   |   kernels ({nk} launches, args once) "
              f"{mb(kern):9.1f} MB {us(kern):8.1f} us")
        result[phase] = {"glue_MB": round(mb(glue), 1), "glue_us": round(us(glue), 1),
                         "glue_ops": sum(1 for ph, *_ in rows if ph == phase),
                         "kernel_MB": round(mb(kern), 1), "kernel_launches": nk}
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--specs", default=",".join(SPECS), help="names under specs/, or paths to .rec files")
    p.add_argument("--strategy", default="chunked")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--V", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--bw", type=float, default=3.0, help="memory bandwidth in TB/s for the us column")
    p.add_argument("--detail", action="store_true", help="one row per (line, aten op)")
    p.add_argument("--host-time", type=int, default=0, metavar="N",
                   help="also time N forward+backward calls on small CPU tensors (kernels stubbed): the host's "
                        "Python and dispatch time per call, without kernel launches")
    p.add_argument("--json", help="write the totals here")
    a = p.parse_args()
    torch.set_num_threads(1)
    results = []
    for spec in a.specs.split(","):
        rows, kernels, host_us = measure(spec, a.strategy, a.B, a.T, a.H, {"K": a.K, "V": a.V}, DTYPES[a.dtype],
                                         a.host_time)
        label = Path(spec).stem if spec.endswith(".rec") else spec
        results.append(summarise(label, rows, kernels, a.bw, a.detail) | {"host_us": host_us})
    print(f"\nsummary (B={a.B} T={a.T} H={a.H} K={a.K} V={a.V} {a.dtype}, {a.bw} TB/s): glue MB / us")
    print(f"  {'spec':18s} {'forward':>18s} {'fwd+bwd':>18s} {'no_grad fwd':>18s} {'ops fwd/bwd':>12s}"
          + (f" {'host us/call':>13s}" if a.host_time else ""))
    for r in results:
        f, b, i = r["forward"], r["backward"], r["inference"]
        print(f"  {r['spec']:18s} {f['glue_MB']:9.1f} {f['glue_us']:7.1f}us "
              f"{f['glue_MB'] + b['glue_MB']:9.1f} {f['glue_us'] + b['glue_us']:7.1f}us "
              f"{i['glue_MB']:9.1f} {i['glue_us']:7.1f}us "
              f"{f['glue_ops']:5d}/{b['glue_ops']:<5d}" + (f" {r['host_us']:13.0f}" if a.host_time else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("RECC_HARDWARE", "h100")
    main()
