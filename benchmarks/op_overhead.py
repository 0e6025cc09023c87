"""Host (Python) overhead of one generated op's forward+backward, on the CPU, no kernels.

    python benchmarks/op_overhead.py [--n 2000] [--specs first_order,gla:recurrent] [--stub-kernels]
                                     [--profile 25]

Compiles each spec with `recc.load`, runs the real `_forward`/`_backward` once
(under TRITON_INTERPRET=1) to learn what they return, then monkeypatches the
module's `_forward`/`_backward` to return fresh empty tensors of those shapes
at once, so what is timed is the op's own host code: argument binding, the
custom-op dispatch, autograd's setup_context and backward. Tensors are tiny, so
allocation is negligible.

With `--stub-kernels`, `_forward`/`_backward` stay real and only the Triton
kernels are replaced by launchers that do nothing (`kernel[grid](...)` returns
at once): the timing then covers all of recc's host code, the strategy's
preambles (tile choice, allocations, launch arguments) included. This is the
host time between two kernel launches on a GPU, less Triton's own launch cost.
`--profile N` prints cProfile's top N functions (own time) of the fwd+bwd step.

Prints microseconds per call:

* bind      - `bind` alone, as the public function calls it;
* forward   - the public function (bind + custom op + autograd graph), grad on;
* backward  - `torch.autograd.backward` through the op;
* fwd+bwd   - one forward and one backward, back to back.
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # kernels_available() on the CPU
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import recc  # noqa: E402
from oracle import random_arguments  # noqa: E402


def _like(x):
    return None if x is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _fake(module, op, args):
    """Replace the module's _forward/_backward by instant stand-ins returning tensors shaped like the real ones."""
    real_forward, real_backward = module._forward, module._backward
    seen = {}

    def record_forward(call):
        seen["fwd"] = real_forward(call)
        return seen["fwd"]

    def record_backward(call, saved, d_outputs, d_finals):
        seen["bwd"] = real_backward(call, saved, d_outputs, d_finals)
        return seen["bwd"]

    module._forward, module._backward = record_forward, record_backward
    out = op(*args)[0]
    out = out[0] if isinstance(out, tuple) else out
    torch.autograd.backward(out, torch.ones_like(out))
    outs, finals, saved = seen["fwd"]
    d_in, d_par, d_init = seen["bwd"]

    def fake_forward(call):
        return ({k: _like(v) for k, v in outs.items()}, {k: _like(v) for k, v in finals.items()},
                tuple(_like(s) for s in saved))

    def fake_backward(call, saved, d_outputs, d_finals):
        return ({k: _like(v) for k, v in d_in.items()}, {k: _like(v) for k, v in d_par.items()},
                {k: _like(v) for k, v in d_init.items()})

    module._forward, module._backward = fake_forward, fake_backward


class _NoLaunch:
    """A Triton kernel that launches nothing: `kernel[grid](*args, **kwargs)` returns None."""

    def __init__(self, name):
        self.__name__ = name

    def __getitem__(self, grid):
        return self._launch

    @staticmethod
    def _launch(*args, **kwargs):
        return None


def _stub_kernels(module):
    """Replace every Triton kernel of the module by a _NoLaunch (helpers `@triton.jit` functions too:
    nothing calls them once the kernels are gone). The launch caches are emptied, so that what they
    hold names the stubs."""
    from triton.runtime.jit import KernelInterface
    for name, value in list(vars(module).items()):
        if isinstance(value, KernelInterface):
            setattr(module, name, _NoLaunch(name))
    for cache in ("_LAUNCHED",):
        if isinstance(getattr(module, cache, None), dict):
            getattr(module, cache).clear()


def _time(fn, n, rounds=5):
    """Microseconds per call: the best of `rounds` rounds of n // rounds calls, in this process's
    CPU time (the machine is shared: time spent descheduled is not the op's)."""
    for _ in range(min(n, 100)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(max(n // rounds, 1)):
            fn()
        best = min(best, (time.process_time() - start) / max(n // rounds, 1))
    return best * 1e6


def measure(spec: str, strategy, n: int, B=1, T=8, H=2, dims=None, stub_kernels=False, profile=0):
    path = ROOT / "specs" / f"{spec}.rec"
    rec = recc.load_spec(path)
    op = recc.load(path, strategy=strategy)
    module = op.module
    dims = dims or {d.name: 4 for d in rec.dims}
    args = [x.requires_grad_() for x in random_arguments(rec, B, T, H, dims)]
    if stub_kernels:
        _stub_kernels(module)
    else:
        _fake(module, op, args)
    out = op(*args)[0]
    out = out[0] if isinstance(out, tuple) else out
    dy = torch.ones_like(out)
    kwargs = {"initial_state": None, "output_final_state": False, "cu_seqlens": None}

    def bind():
        module._bind(module._REC, tuple(args), kwargs)

    def forward():
        return op(*args)

    graphs = []

    def backward():
        torch.autograd.backward(graphs.pop(), dy)

    def step():
        o = op(*args)[0]
        torch.autograd.backward(o[0] if isinstance(o, tuple) else o, dy)

    t_bind = _time(bind, n)
    t_fwd = _time(forward, n)
    reps = n + min(n, 100)
    for _ in range(reps):
        o = op(*args)[0]
        graphs.append(o[0] if isinstance(o, tuple) else o)
    t_bwd = _time(backward, n)
    t_step = _time(step, n)
    label = f"{spec}" + (f" ({module.STRATEGY})")
    print(f"{label:28s} bind {t_bind:7.1f} us   forward {t_fwd:7.1f} us (op+autograd {t_fwd - t_bind:6.1f})   "
          f"backward {t_bwd:7.1f} us   fwd+bwd {t_step:7.1f} us")
    if profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(min(n, 500)):
            step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(profile)
    return t_step


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--specs", default="first_order,gla:recurrent",
                   help="comma-separated SPEC[:STRATEGY]")
    p.add_argument("--stub-kernels", action="store_true",
                   help="keep _forward/_backward real and stub only the Triton launches")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile's top N functions of fwd+bwd")
    a = p.parse_args()
    torch.set_num_threads(1)
    for item in a.specs.split(","):
        spec, _, strategy = item.partition(":")
        measure(spec, strategy or None, a.n, stub_kernels=a.stub_kernels, profile=a.profile)


if __name__ == "__main__":
    main()
