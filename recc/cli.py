"""The `recc` command line: check and compile recurrence specs."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__, ir
from .check import fmt_shape, load
from .errors import ReccError
from .hardware import PRESETS
from .plan import plan_json, plan_text

DESCRIPTION = """\
recc compiles a recurrence written in a small language (.rec files) into GPU
kernels with autograd, and checks it against its own sequential reference.

examples:
  recc check specs/gated_delta_net.rec          # parse, check, print what recc sees
  recc check --json specs/*.rec                 # the same as JSON, one object per file
  recc check --tune 8 specs/gla.rec             # time the 8 best tile points on the GPU, keep the fastest
  recc compile specs/gated_delta_net.rec -o build/gdn.py
"""


def _tensor_json(d: ir.TensorDecl) -> dict:
    out = {"name": d.name, "shape": list(d.shape)}
    if d.annotations:
        out["annotations"] = [{"name": a.name, "args": list(a.args)} for a in d.annotations]
    return out


def _analysis():
    """The analysis stage, if this build has it."""
    try:
        from . import analysis
    except ImportError:
        return None
    return analysis if hasattr(analysis, "facts_json") else None


def _tiles():
    """The tile stage, if this build has it."""
    try:
        from . import tiles
    except ImportError:
        return None
    return tiles


def spec_json(rec: ir.Recurrence, hw=None) -> dict:
    data = {
        "name": rec.name,
        "file": rec.file,
        "dims": {d.name: d.size for d in rec.dims},
        "inputs": [_tensor_json(d) for d in rec.inputs],
        "params": [_tensor_json(d) for d in rec.params],
        "consts": [c.name for c in rec.consts],
        "states": [{**_tensor_json(d), "init": d.init} for d in rec.states],
        "outputs": [_tensor_json(d) for d in rec.outputs],
        "monoids": [{"name": m.name, "elements": list(m.elements)} for m in rec.monoids],
    }
    analysis = _analysis()
    if analysis is not None:
        data.update(analysis.facts_json(rec))
    tiles = _tiles()
    if tiles is not None and analysis is not None:
        data["tiles"] = tiles.tiles_json(rec, hw)
        data["plan"] = plan_json(rec, hw)
    return data


def spec_text(rec: ir.Recurrence, hw=None) -> str:
    decl = lambda d: d.name + ("[" + ", ".join(map(str, d.shape)) + "]" if d.shape else "")
    dims = ", ".join(d.name + (f" = {d.size}" if d.size is not None else "") for d in rec.dims)
    lines = [
        f"{rec.name}  ({rec.file})",
        f"  dims     {dims or 'none'}",
        f"  inputs   {', '.join(decl(d) for d in rec.inputs)}   per step: [B, T, H, ...]",
        f"  params   {', '.join(decl(d) for d in rec.params) or 'none'}",
        f"  consts   {', '.join(c.name for c in rec.consts) or 'none'}",
        f"  states   {', '.join(decl(d) for d in rec.states)}   carried: [N, H, ...]",
        f"  outputs  {', '.join(decl(d) for d in rec.outputs)}",
    ]
    analysis = _analysis()
    if analysis is not None:
        lines.append(analysis.facts_text(rec))
    tiles = _tiles()
    if tiles is not None and analysis is not None:
        lines.append(plan_text(rec, hw))
        lines.append(tiles.tiles_text(rec, hw))
    return "\n".join(lines)


def cmd_check(args) -> int:
    results = []
    for path in args.files:
        rec = load(path)
        hw = getattr(args, "hardware", None)
        results.append(spec_json(rec, hw) if args.json else spec_text(rec, hw))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    else:
        print("\n\n".join(results))
    if args.tune is not None:
        from .runtime import tune_spec
        if args.tune < 1:
            raise ReccError(f"--tune takes the number of tile points to time, at least 1 (got {args.tune})")
        for path in args.files:
            tune_spec(path, args.tune, report=lambda line: print(line, file=sys.stderr if args.json else sys.stdout))
    return 0


def cmd_compile(args) -> int:
    from .render import render_module
    from .runtime import write_atomic
    rec = load(args.file)
    out = Path(args.output) if args.output else Path(args.file).with_suffix(".py")
    if out.is_dir():
        out = out / f"{rec.name}.py"
    if out.resolve() == Path(args.file).resolve():
        raise ReccError(f"{out}: refusing to overwrite the spec itself")
    write_atomic(out, render_module(rec, strategy=args.strategy))
    print(f"wrote {out}: {rec.name}() and reference()")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recc", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"recc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("check", help="parse and check specs; print what recc sees (shapes, analysis, plan)",
                       description="Parse and check spec files. Exit status 1 on the first error.")
    c.add_argument("files", nargs="+", metavar="FILE", help="a .rec spec")
    c.add_argument("--json", action="store_true", help="print machine-readable JSON")
    c.add_argument("--hardware", choices=tuple(PRESETS), default=None,
                   help="choose tiles for this hardware model (default: this machine's GPU; without one, or under "
                        "TRITON_INTERPRET=1, the interpreter model; RECC_HARDWARE sets it too)")
    c.add_argument("--tune", type=int, metavar="N", default=None,
                   help="time the N best feasible tile points of the spec's kernels on this machine's GPU at the "
                        "main shape and cache the fastest (the generated ops then launch it there); needs a GPU")
    c.set_defaults(run=cmd_check)
    m = sub.add_parser("compile", help="compile a spec into an importable Python module",
                       description="Compile a spec into a Python module exposing the op and its reference.")
    m.add_argument("file", metavar="FILE", help="a .rec spec")
    m.add_argument("-o", "--output", metavar="OUT.py", help="where to write the module, a file or an existing directory (default: FILE with .py)")
    m.add_argument("--strategy", choices=("chunked", "scan", "cell", "recurrent"),
                   help="use this strategy (default: the best one that lowers the spec)")
    m.set_defaults(run=cmd_compile)
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    try:
        return args.run(args)
    except ReccError as e:
        print(f"recc: {e}" if not hasattr(e, "location") else str(e), file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `recc check --json ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
