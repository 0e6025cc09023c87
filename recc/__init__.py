"""recc: a compiler from recurrence specs (.rec files) to GPU kernels.

    import recc
    gdn = recc.load("specs/gated_delta_net.rec")   # compiled once, cached
    o, final_state = gdn(q, k, v, g, beta, output_final_state=True)

Stages, one module each: parse -> check (typed IR) -> analysis -> plan -> render -> runtime.
"""
__version__ = "0.1.0"

from .check import check, load as load_spec  # noqa: E402
from .errors import ArgumentError, ReccError, SpecError  # noqa: E402
from .runtime import load  # noqa: E402

__all__ = ["check", "load_spec", "load", "ReccError", "SpecError", "ArgumentError", "__version__"]
