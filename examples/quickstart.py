"""recc's main job in one script: compile every example spec, then run one op on
the CPU and compare it with the spec's own float64 sequential reference.

    python examples/quickstart.py [SPEC_NAME]
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # run Triton kernels on the CPU; set before triton loads

import torch  # noqa: E402

from recc.cli import main as recc_main  # noqa: E402
from recc.check import load  # noqa: E402
from recc.primitives import sample_input  # noqa: E402
from recc.runtime import import_path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"


def random_arguments(rec, B=2, T=37, H=2, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dims = {d: size for d in rec.free_dims} | rec.fixed_dims
    full = lambda lead, decl: lead + tuple(dims[d] if isinstance(d, str) else d for d in decl.shape)
    args = [sample_input(full((B, T, H), d), d.annotations, gen, torch.float32) for d in rec.inputs]
    args += [0.5 * sample_input(full((H,), d), d.annotations, gen, torch.float32) for d in rec.params]
    return args


def main(name="gated_delta_net"):
    for spec in sorted((ROOT / "specs").glob("*.rec")):
        if recc_main(["compile", str(spec), "-o", str(BUILD / (spec.stem + ".py"))]) != 0:
            return 1
    rec = load(ROOT / "specs" / f"{name}.rec")
    module = import_path(BUILD / f"{name}.py", name)
    args = random_arguments(rec)
    out, final = getattr(module, name)(*args, output_final_state=True)
    ref, ref_final = module.reference(*args, output_final_state=True)
    err = (out.double() - ref).abs().max().item()
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    print(f"{name} ({module.STRATEGY} kernels, Triton interpreter): output {tuple(out.shape)} {out.dtype}; "
          f"max |op - reference| = {err:.3e}, relative {rel:.3e}")
    return 0 if rel < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
