"""An address sanitizer for Triton's CPU interpreter (TRITON_INTERPRET=1).

    with oob.sanitizer() as report:     # or the `oob` fixture of tests/conftest.py
        kernel[grid](x, y, ...)
    report.launches, report.accesses    # what was checked

While it is active, every launch of an interpreted kernel runs on copies of its tensor arguments
placed between red zones (unmapped from no one's point of view, but owned by no tensor: a read or
write that strays past a tensor lands there, not silently inside a neighbouring tensor), and every
load, store and atomic checks each ACTIVE lane (its mask true) of its pointer block: the bytes it
touches must lie inside the storage of one of the launch's tensor arguments (storages shared by
several arguments, e.g. one tensor passed twice, are copied once and stay shared). The first
violation raises `OutOfBounds` naming the kernel, the source line, the operation, the program id,
the argument whose storage (or red zone) the address falls in and its offset in elements from that
argument's first element, with the storage's size; the exception escapes the interpreter wrapped in
its InterpreterError, and `sanitizer()` re-raises the recorded `OutOfBounds` itself on exit.
After the launch the copies are written back to the arguments (their values as without it).

What it does not see: addresses computed from a tensor that land inside another argument's storage
(the red zones make that unlikely: an overrun must jump over at least `redzone` bytes), tensor
descriptors and block pointers (the generated kernels use neither), and anything the interpreter
does differently from a GPU (warps, pipelining, layouts: a compiler bug is invisible here).
Hook points (triton/runtime/interpreter.py): GridExecutor.__call__ (a launch; its tensors become
base pointers in `_implicit_cvt`) and the methods of the module's `interpreter_builder` that touch
memory (create_masked_load / create_masked_store, to which the unmasked forms and atomic
load/store delegate, create_atomic_rmw, create_atomic_cas).
"""
from __future__ import annotations

import contextlib
import linecache
import sys
from dataclasses import dataclass, field

import numpy as np
import torch


class OutOfBounds(AssertionError):
    """An active lane of a load/store/atomic touched memory outside every argument's storage."""


@dataclass
class _Region:
    name: str           # the argument(s) on this storage, e.g. "k" or "q, dummy"
    lo: int             # the storage's first byte (in the zoned copy)
    hi: int             # one past its last byte
    base: int           # the first argument's first element (its data_ptr)
    itemsize: int
    numel: int          # storage size in the first argument's elements


@dataclass
class Report:
    redzone: int
    launches: int = 0
    accesses: int = 0                       # memory operations checked
    lanes: int = 0                          # active lanes checked
    kernels: dict = field(default_factory=dict)   # kernel name -> launches
    violation: OutOfBounds | None = None


_STATE = {"report": None, "launch": None}


def _zone(arg_names, args, kwargs, redzone):
    """The arguments with every tensor moved onto a red-zoned copy of its storage; the regions;
    a function that writes the copies back."""
    zoned = {}      # original storage data_ptr -> (orig storage, zoned buffer, regions index)
    regions: list[_Region] = []

    def move(name, t):
        if isinstance(t, tuple):
            return type(t)(move(name, x) for x in t) if not hasattr(t, "_fields") else type(t)(*(move(name, x) for x in t))
        wrapper = None
        if not isinstance(t, torch.Tensor) and hasattr(t, "base") and isinstance(getattr(t, "base"), torch.Tensor):
            wrapper, t = t, t.base          # triton's TensorWrapper (a reinterpreted dtype)
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            return t if wrapper is None else wrapper
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in zoned:
            nbytes = storage.nbytes()
            buf = torch.empty(redzone + nbytes + redzone, dtype=torch.uint8)
            buf[:redzone].fill_(0xFF)       # NaN for floats, -1 for ints: a stray read shows
            buf[redzone + nbytes:].fill_(0xFF)
            buf[redzone:redzone + nbytes].copy_(torch.empty(0, dtype=torch.uint8).set_(storage))
            lo = buf.data_ptr() + redzone
            regions.append(_Region(name, lo, lo + nbytes, lo + t.storage_offset() * t.element_size(),
                                   t.element_size(), nbytes // t.element_size()))
            zoned[key] = (storage, buf, len(regions) - 1)
        else:
            region = regions[zoned[key][2]]
            if name not in region.name.split(", "):
                region.name += f", {name}"
        _, buf, _ = zoned[key]
        assert redzone % t.element_size() == 0
        out = t.new_empty(0).set_(buf.untyped_storage(), redzone // t.element_size() + t.storage_offset(),
                                  t.size(), t.stride())
        if wrapper is not None:
            import triton
            out = triton.runtime.jit.TensorWrapper(out, wrapper.dtype)
        return out

    names = list(arg_names)
    new_args = [move(names[i] if i < len(names) else f"arg{i}", a) for i, a in enumerate(args)]
    new_kwargs = {k: move(k, v) for k, v in kwargs.items()}

    def write_back():
        for storage, buf, _ in zoned.values():
            n = storage.nbytes()
            torch.empty(0, dtype=torch.uint8).set_(storage).copy_(buf[redzone:redzone + n])

    return new_args, new_kwargs, regions, write_back


class _Launch:
    def __init__(self, name, filename, regions):
        self.name, self.filename, self.regions = name, filename, sorted(regions, key=lambda r: r.lo)
        self.starts = np.array([r.lo for r in self.regions], dtype=np.uint64)
        self.ends = np.array([r.hi for r in self.regions], dtype=np.uint64)


def _where(filename):
    """file:line and the source text of the innermost kernel frame (the interpreter keeps the
    kernel's file and line numbers in its rewritten functions)."""
    frame = sys._getframe(2)
    while frame is not None:
        f = frame.f_code.co_filename
        if f != __file__ and "/triton/" not in f and "/torch/" not in f:
            return f"{f}:{frame.f_lineno}: {linecache.getline(f, frame.f_lineno).strip()}"
        frame = frame.f_back
    return "?"


def _check(op, ptrs, mask):
    launch, report = _STATE["launch"], _STATE["report"]
    if launch is None or report is None:
        return
    from triton.runtime.interpreter import interpreter_builder
    addr = np.asarray(ptrs.data, dtype=np.uint64)
    if mask is not None:
        addr = addr[np.broadcast_to(np.asarray(mask.data, dtype=bool), addr.shape)]
    addr = addr.ravel()
    report.accesses += 1
    report.lanes += addr.size
    if addr.size == 0:
        return
    size = np.uint64(max(1, ptrs.get_element_ty().primitive_bitwidth // 8))
    i = np.searchsorted(launch.starts, addr, side="right").astype(np.int64) - 1
    inside = (i >= 0) & (addr + size <= launch.ends[np.maximum(i, 0)])
    if inside.all():
        return
    bad = int(np.flatnonzero(~inside)[0])
    a = int(addr[bad])
    # the argument it belongs to: the storage whose red zone (or body) holds it, else the nearest
    near = min(launch.regions, key=lambda r: 0 if r.lo - report.redzone <= a < r.hi + report.redzone
               else min(abs(a - r.lo), abs(a - r.hi)))
    offset = (a - near.base) / near.itemsize
    offset = int(offset) if offset == int(offset) else offset
    n_bad = int((~inside).sum())
    err = OutOfBounds(
        f"{launch.name}: {op} out of bounds at program id {interpreter_builder.grid_idx}, "
        f"{_where(launch.filename)}\n  argument {near.name!r}: element offset {offset} "
        f"(its storage holds {near.numel} elements of {near.itemsize} bytes; byte {a - near.lo} from the "
        f"storage's start); {n_bad} of {addr.size} active lanes outside")
    if report.violation is None:
        report.violation = err
    raise err


@contextlib.contextmanager
def sanitizer(redzone: int = 1 << 20):
    """Check every interpreted launch inside the block (see the module docstring)."""
    import triton.runtime.interpreter as interp

    if _STATE["report"] is not None:        # nested: the outer one checks already
        yield _STATE["report"]
        return
    redzone = -(-redzone // 4096) * 4096
    report = Report(redzone)
    builder = interp.interpreter_builder
    call = interp.GridExecutor.__call__
    names = ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")
    saved = {n: getattr(builder, n) for n in names}
    own = {n: builder.__dict__[n] for n in names if n in builder.__dict__}   # patched by someone already

    def launch(self, *args, **kwargs):
        args, kwargs, regions, write_back = _zone(self.arg_names, args, kwargs, report.redzone)
        name = getattr(self.fn, "__name__", "?")
        outer = _STATE["launch"]
        _STATE["launch"] = _Launch(name, getattr(getattr(self.fn, "__code__", None), "co_filename", ""), regions)
        report.launches += 1
        report.kernels[name] = report.kernels.get(name, 0) + 1
        try:
            return call(self, *args, **kwargs)
        finally:
            _STATE["launch"] = outer
            write_back()

    def load(ptrs, mask, other, cache_policy, is_volatile):
        _check("load", ptrs, mask)
        return saved["create_masked_load"](ptrs, mask, other, cache_policy, is_volatile)

    def store(ptrs, value, mask, cache_policy):
        _check("store", ptrs, mask)
        return saved["create_masked_store"](ptrs, value, mask, cache_policy)

    def rmw(rmwOp, ptr, val, mask, sem, scope):
        _check("atomic_rmw", ptr, mask)
        return saved["create_atomic_rmw"](rmwOp, ptr, val, mask, sem, scope)

    def cas(ptr, cmp, val, sem, scope):
        _check("atomic_cas", ptr, None)
        return saved["create_atomic_cas"](ptr, cmp, val, sem, scope)

    interp.GridExecutor.__call__ = launch
    builder.create_masked_load, builder.create_masked_store = load, store
    builder.create_atomic_rmw, builder.create_atomic_cas = rmw, cas
    _STATE["report"] = report
    try:
        yield report
    except BaseException as e:
        if report.violation is not None and e is not report.violation:
            raise report.violation from e
        raise
    finally:
        interp.GridExecutor.__call__ = call
        for n in names:
            if n in own:
                setattr(builder, n, own[n])
            else:
                delattr(builder, n)
        _STATE["report"] = None
    if report.violation is not None:
        raise report.violation
