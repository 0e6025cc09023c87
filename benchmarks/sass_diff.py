"""Does a change alter the GPU code? The SASS of every `chunked` kernel, at the plans the solver
picks for a GPU model, here and at another git revision, compiled for sm_90 without a GPU.

Where two revisions give the same SASS at the same launch configuration (warps, stages), a GPU
timing of one is a timing of the other (the host code aside: this tool does not compare it).
Each side runs in a subprocess with its own checkout first on PYTHONPATH (the revision's in a
temporary git worktree); both use this checkout's chunked_registers.py to compile, and each its
own solver for the tiles. A kernel that fails to compile is listed as such, and counts as
unchanged only where both sides fail alike.

    python benchmarks/sass_diff.py 2f3de4c                      # the six anchor specs, h200 plans
    python benchmarks/sass_diff.py HEAD~3 --specs mlstm --hardware h100 --dtype fp32

Put the Triton that compiles for the GPU first on PYTHONPATH (pip install --target DIR triton==3.6.0):
the SASS is that version's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ["simple_gla", "gla", "delta_net", "gated_delta_net", "delta_product", "mlstm"]


def dump(specs: list[str], hw: str, dtype: str) -> dict:
    """{spec/plan/kernel: (warps, stages, sha1 of the SASS or 'error: ...', instructions)}, for the recc
    first on sys.path (the side this process was started for)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import chunked_registers as c
    out = {}
    for spec in specs:
        rec, points = c.plan_points(spec, hw, dtype)
        for plan, kernel, fn, consts, warps, stages in points:
            try:
                sass = c.sass(c.compile_kernel(fn, consts, warps, stages, dtype=dtype))
                digest, size = hashlib.sha1(sass.encode()).hexdigest()[:12], sass.count("\n")
            except Exception as error:  # noqa: BLE001 - reported, compared as such
                digest, size = f"error: {type(error).__name__}", 0
            out[f"{spec}/{plan}/{kernel}"] = (warps, stages, digest, size)
    return out


def side(checkout: Path, args) -> dict:
    """One side's dump, in a subprocess with `checkout` first on PYTHONPATH (this checkout's own
    entry, if any, dropped: the other recc must not shadow it)."""
    rest = [q for q in os.environ.get("PYTHONPATH", "").split(os.pathsep) if q and Path(q).resolve() != ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), *rest])}
    cmd = [sys.executable, __file__, "--dump", "--specs", ",".join(args.specs),
           "--hardware", args.hardware, "--dtype", args.dtype]
    done = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"sass_diff: the dump at {checkout} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev", nargs="?", help="the git revision to compare this checkout with")
    p.add_argument("--specs", type=lambda s: s.split(","), default=SPECS)
    p.add_argument("--hardware", default="h200", help="the model the plans are chosen for (a recc.hardware preset)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--dump", action="store_true", help=argparse.SUPPRESS)   # one side, as JSON
    args = p.parse_args(argv)
    if args.dump:
        os.environ.pop("TRITON_INTERPRET", None)
        print(json.dumps(dump(args.specs, args.hardware, args.dtype)))
        return 0
    if not args.rev:
        p.error("give a revision")
    import triton
    print(f"Triton {triton.__version__}, sm_90a, {args.dtype}, plans for {args.hardware}: this checkout against {args.rev}")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "rev"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.rev], check=True)
        try:
            theirs, ours = side(tree, args), side(ROOT, args)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    changed = 0
    for key in sorted(set(ours) | set(theirs)):
        a, b = theirs.get(key), ours.get(key)
        same = a == b and a is not None
        changed += not same
        show = lambda x: "absent" if x is None else f"{x[0]}w {x[1]}st {x[2]} ({x[3]} lines)"
        print(f"{'same   ' if same else 'CHANGED'} {key:45s} {show(b)}" + ("" if same else f"   was {show(a)}"))
    errors = sum(1 for v in ours.values() if v[2].startswith("error"))
    print(f"{len(ours)} kernels here, {changed} changed, {errors} not compiled")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
