"""Shared test setup.

* Triton runs under its CPU interpreter unless a GPU run asks otherwise.
* The interpreter silently ignores launch keywords a kernel does not declare;
  compiled Triton raises on them. The tests make the interpreter strict too, so
  such a launch fails here rather than first on a GPU.
* The interpreter rounds fp32 -> bf16 toward zero (twice the error of a GPU's
  round-to-nearest-even, and biased); the tests make it round to nearest even, as
  the GPU does, so bf16 errors here are the GPU's (tests/test_interpreter.py checks it).
* The `oob` fixture runs a test under the interpreter's address sanitizer (tests/oob.py): any
  active lane of a load/store/atomic outside its launch's tensors fails it.
"""
import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is imported

# Keywords every launch may pass that are not kernel parameters (compile options of Triton's CUDA
# backend, 3.6 and 3.9 alike).
_LAUNCH_OPTIONS = {"num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion", "launch_cooperative_grid"}


def _strict_interpreter():
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import triton.runtime.interpreter as interpreter

    run = interpreter.InterpretedFunction.run

    def strict_run(self, *args, grid, warmup, **kwargs):
        unknown = set(kwargs) - set(self.arg_names) - _LAUNCH_OPTIONS
        if unknown:
            raise KeyError(f"{self.__name__} launched with keyword(s) it does not declare: {sorted(unknown)}")
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = strict_run


def _gpu_rounding():
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interpreter

    cast = interpreter.InterpreterBuilder.cast_impl

    def cast_rne(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            x = np.asarray(src.data, dtype=np.float32)
            u = x.view(np.uint32).astype(np.uint64)
            bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
            return interpreter.TensorHandle(np.where(np.isnan(x), np.uint16(0x7FC0), bits), dst_type.scalar)
        return cast(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_rne


_strict_interpreter()
_gpu_rounding()


@pytest.fixture
def oob():
    """The test's interpreted launches under the address sanitizer (tests/oob.py); yields its report."""
    from oob import sanitizer
    with sanitizer() as report:
        yield report
