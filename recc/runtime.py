"""Stage 7: compile once, cache by content, import; and the small helpers the
generated modules call at run time.

`load(path)` checks the spec, renders its module into the user's cache
directory under a key made of the spec's text, recc's own source (code and
templates) and the versions of triton and torch, and imports it. A second call
with the same inputs only imports (and, in one process, returns the module
already imported). Files are written to a temporary name and renamed, so a
crash never leaves a half-written module behind.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from . import __version__
from .check import load as load_spec
from .errors import ArgumentError

_PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    root = os.environ.get("RECC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "recc")
    return Path(root)


@functools.lru_cache(maxsize=1)
def _recc_digest() -> str:
    """A hash of recc's own code and templates: a changed compiler means a new module."""
    from .resources import templates_dir
    h = hashlib.sha256()
    files = sorted(_PACKAGE.rglob("*.py")) + sorted(Path(templates_dir()).glob("*.jinja"))
    for f in files:
        h.update(str(f.relative_to(f.parent.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _versions() -> str:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - triton is a dependency
        triton_version = "none"
    import torch
    return f"recc={__version__}+{_recc_digest()};triton={triton_version};torch={torch.__version__}"


def cache_key(source: str, strategy: str | None = None, tiles: dict | None = None) -> str:
    choices = (strategy or "auto") + repr(sorted((tiles or {}).items()))
    text = _versions() + "\0" + choices + "\0" + source
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def import_path(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load(path: str | os.PathLike, strategy: str | None = None, tiles: dict | None = None):
    """Compile a spec (once; cached) and return its op. The op carries
    `.reference` (the float64 oracle) and `.module` (the generated module).
    `strategy` forces one strategy, `tiles` overrides tile choices (see `recc.plan`)."""
    return load_checked(load_spec(path), strategy, tiles)


def load_checked(rec, strategy: str | None = None, tiles: dict | None = None):
    """`load` of a checked recurrence (a generated chunked module gets its decoder so: the
    recurrent strategy's op of its own spec)."""
    from .render import render_module
    key = cache_key(rec.source, strategy, tiles)
    module_name = f"recc_generated_{rec.name}_{key}"
    module = sys.modules.get(module_name)
    if module is None:
        target = cache_dir() / key / f"{rec.name}.py"
        if not target.exists():
            write_atomic(target, render_module(rec, strategy=strategy, tiles=tiles))
        module = import_path(target, module_name)
    op = getattr(module, rec.name)
    op.reference = module.reference
    op.module = module
    return op


def tune_spec(path: str | os.PathLike, n: int, strategy: str | None = None, report=print, *,
              device: str = "cuda", dims: dict | None = None, timer=None) -> dict:
    """Time the `n` best feasible tile points (by the cost model) of the spec's kernels on this
    machine's GPU at the spec's main shape (`recc.tiles.families_of`, or `dims`: spec dim sizes
    and B, T, H; bf16 inputs, fp32 for a scan), forward + backward through the op, and cache
    the fastest (`recc.tiles.tune`): the generated host code launches it from then on at that
    shape. Returns the winner. Raises TuningNeedsGPU without a GPU (`device` and `timer` let a
    test run it on the CPU interpreter with a fake clock)."""
    import torch
    from . import tiles as T
    from .primitives import sample_input
    if device == "cuda" and not torch.cuda.is_available():
        raise T.TuningNeedsGPU("tuning times kernels on a GPU, and torch.cuda.is_available() is False here; "
                               "the tiles stay the cost model's choice")
    rec = load_spec(path)
    op = load(path, strategy)
    module, family = op.module, op.module.STRATEGY
    if family not in T.FAMILIES or not hasattr(module, "_OVERRIDES"):
        raise ArgumentError(f"{rec.name}: strategy {family} takes no tiles from the solver; nothing to tune")
    device = torch.device(device)
    size = {**{d.name: 128 for d in rec.dims}, **rec.fixed_dims, **(dims or {})}
    B, steps, H = (int(size.get(k, T.MAIN[k])) for k in ("B", "T", "H"))
    dims, _ = T.families_of(rec, dims).get(family, (None, None))
    if dims is None:
        raise ArgumentError(f"{rec.name}: the analysis lists no {family} kernels for this spec; nothing to tune")
    shape = dict(module._LAUNCH_SHAPE)
    dtype = torch.float32 if family == "scan" or device.type == "cpu" else torch.bfloat16
    if family == "cell":
        shape["save_dots"] = bool(module._cell_tuning.get("save_dots", True))
        dims["RB"] = torch.finfo(dtype).bits // 8
    gen = torch.Generator().manual_seed(0)
    full = lambda lead, d: lead + tuple(size[x] if isinstance(x, str) else x for x in d.shape)
    args = [sample_input(full((B, steps, H), d), d.annotations, gen) for d in rec.inputs]
    args += [0.5 * sample_input(full((H,), d), d.annotations, gen) for d in rec.params]
    leaves = [a.to(device=device, dtype=dtype).requires_grad_() for a in args]
    tiles = T.choose_tiles(family, dims, T._device_model(device), **shape)
    report(f"{rec.name}: timing the {n} best {family} tile points at {T._dims_text(tiles.dims, {})} "
           f"on {tiles.hardware.name} (forward + backward)")
    saved = dict(module._OVERRIDES)

    def run(point):
        module._OVERRIDES.clear()
        module._OVERRIDES.update(saved, **point)
        out = op(*leaves)[0]
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward([o.float().sum() for o in outs])
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        best = T.tune(tiles, run, n, spec_key=T.spec_key(rec), timer=timer)
    finally:
        module._OVERRIDES.clear()
        module._OVERRIDES.update(saved)
        T._launch.cache_clear()
        module._LAUNCHED.clear()
    report(f"{rec.name}: fastest {T.described(best)} (model's choice: {T.described(tiles.assignment)}); "
           f"cached for this shape and GPU")
    return best


# ---- used by generated modules at run time ------------------------------------

_OP_NAMES = set()


def op_name(name: str, spec_hash: str) -> str:
    """A custom-op name `recc::<name>_<hash>` not yet registered in this process
    (a module imported twice registers its ops under a fresh suffix)."""
    import torch
    base = f"{name}_{spec_hash[:10]}"
    candidate, n = base, 1
    while candidate in _OP_NAMES or hasattr(torch.ops.recc, candidate):
        n += 1
        candidate = f"{base}_{n}"
    _OP_NAMES.add(candidate)
    _OP_NAMES.add(candidate + "_backward")
    return f"recc::{candidate}"


def kernels_available(device) -> bool:
    """Can Triton kernels run on this device: a GPU, or the CPU under TRITON_INTERPRET=1."""
    kind = device.type
    return kind == "cuda" or (kind == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def check_contiguous(call) -> None:
    """Kernels index tensors as dense row-major blocks: name the argument that is not."""
    if all(t.is_contiguous() for t in (*call.inputs.values(), *call.params.values(),
                                         *(call.initial_state or {}).values())) and \
            (call.cu_seqlens is None or call.cu_seqlens.is_contiguous()):
        return
    op = call.rec.name
    named = list(call.inputs.items()) + list(call.params.items())
    named += [("initial_state" if len(call.rec.states) == 1 else f"initial_state[{k}]", v)
              for k, v in (call.initial_state or {}).items()]
    if call.cu_seqlens is not None:
        named.append(("cu_seqlens", call.cu_seqlens))
    for name, t in named:
        if not t.is_contiguous():
            raise ArgumentError(f"{op}(): argument '{name}' must be contiguous (call .contiguous() on it), "
                                f"got strides {tuple(t.stride())} for shape {tuple(t.shape)}")


def chunk_offsets(cu_seqlens, chunk: int):
    """[N] int32: index of each sequence's first checkpoint when sequence i has
    ceil(length_i / chunk) checkpoints (computed on the device, no sync)."""
    import torch
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    counts = (lengths + chunk - 1) // chunk
    return (torch.cumsum(counts, 0) - counts).to(torch.int32)


def fresh_states(rec, call, device) -> dict:
    """The states before any step: the initial state if given, else each state's init value (fp32)."""
    import torch
    out = {}
    for s in rec.states:
        shape = (call.N, call.H) + tuple(call.dims[d] if isinstance(d, str) else d for d in s.shape)
        given = (call.initial_state or {}).get(s.name)
        out[s.name] = given.to(torch.float32).clone() if given is not None else \
            torch.full(shape, s.init, dtype=torch.float32, device=device)
    return out


def cdiv(a: int, b: int) -> int:
    """triton.cdiv for the generated host code, in plain integer arithmetic (triton's is a wrapped
    call costing a few microseconds a launch on the host)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """triton.next_power_of_2 (for n >= 1; 0 for n <= 0), in plain integer arithmetic."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def or_zeros(x, shape, kwargs):
    """A gradient that autograd may leave out (None) or hand over strided: dense, or zeros."""
    import torch
    return torch.zeros(shape, **kwargs) if x is None else x.contiguous()


def result_like(rec, call, dtype, device) -> tuple:
    """Empty outputs [B, T, H, ...] (dtype) and final states [N, H, ...] (fp32), for fake tensors."""
    import torch
    size = lambda shape: tuple(call.dims[d] if isinstance(d, str) else d for d in shape)
    outputs = [torch.empty((call.B, call.T, call.H) + size(o.shape), dtype=dtype, device=device)
               for o in rec.outputs]
    finals = [torch.empty((call.N, call.H) + size(s.shape), dtype=torch.float32, device=device) for s in rec.states]
    return outputs, finals


def dealias(results: list, inputs: tuple) -> list:
    """A custom op may not return its inputs, views of them, or one tensor
    twice: copy those (e.g. a strategy that saves an input or an output for
    its backward gets a copy)."""
    seen = {x.untyped_storage().data_ptr() for x in inputs if x is not None and x.numel()}
    out = []
    for r in results:
        if r.numel():
            pointer = r.untyped_storage().data_ptr()
            if pointer in seen:
                r = r.clone()
            seen.add(pointer)
        out.append(r)
    return out


class autograd_enabled:
    """Inside a custom op, autograd is switched off below the op; a strategy's
    `_backward` may still differentiate its own per-step expressions with
    torch.autograd. This turns autograd back on for the block (grad mode and
    the autograd dispatch keys), and restores the previous state after."""

    def __enter__(self):
        import torch
        keys = torch._C.DispatchKey
        self.keys = [getattr(keys, k) for k in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor",
                                                "AutogradCPU", "AutogradCUDA") if hasattr(keys, k)]
        self.saved = [torch._C._dispatch_tls_is_dispatch_key_excluded(k) for k in self.keys]
        for k in self.keys:
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, False)
        self.grad = torch.enable_grad()
        self.grad.__enter__()
        return self

    def __exit__(self, *exc):
        import torch
        self.grad.__exit__(*exc)
        for k, v in zip(self.keys, self.saved):
            torch._C._dispatch_tls_set_dispatch_key_excluded(k, v)
        return False
