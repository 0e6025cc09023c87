"""Shared test setup.

* Triton runs under its CPU interpreter unless a GPU run asks otherwise.
* The interpreter silently ignores launch keywords a kernel does not declare;
  compiled Triton raises on them. The tests make the interpreter strict too, so
  such a launch fails here rather than first on a GPU.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is imported

# Keywords every launch may pass that are not kernel parameters.
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


_strict_interpreter()
