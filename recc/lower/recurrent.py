"""Strategy `recurrent`: one fused sequential kernel per direction.

Forward: one program per (sequence, head, column tile). The program holds its
tile of every state in registers (fp32; the tile choices ORDER and ORDER_bwd
pick the register order of a matrix state's tile in each kernel, `emit.ORDERS`)
and walks the sequence; each step loads its inputs (the next step's loads are
issued before the current step computes), runs the step body emitted from the
IR (`recc.lower.emit`) and stores the step's outputs. Every CHUNK steps it stores the state: the
checkpoints the backward starts from.

Backward: the same grid. The program walks the chunks in reverse; for each
chunk it reloads the checkpoint, replays the chunk's steps (state update only)
keeping each step's incoming state in a per-program scratch tile in global
memory (written and read back by the same program, L2-resident), then walks
the chunk backwards: the step is recomputed from its incoming state and its
adjoint (reverse-mode of the emitted step, `emit.vjp`) carries dState in
registers. Decays are never inverted. Gradients of values that do not depend
on the column dim (q, k, gates, params) are partial sums over the program's
column tile, stored per tile and summed on the host: no atomics.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import jinja2

from .. import ir
from ..resources import templates_dir
from ..tiles import described, launch_shape, reference_tiles, spec_key
from . import Lowered, literal
from .emit import (COL, LEAVES, ROW, Emitter, Graph, Namer, StepLowering, Unsupported, reachable, tile_axes, vjp)

# Names the kernel skeleton (templates/recurrent.py.jinja) uses itself.
SKELETON_NAMES = (
    "tl", "triton", "torch", "i_v", "i_nh", "i_n", "i_h", "bos", "eos", "seq_len", "chunk0", "rows", "cols",
    "cols_in_tile", "row_mask", "col_mask", "tile_mask", "tile0", "i_c", "t", "tok", "tok_next", "program",
    "n_chunks", "c", "t0", "t1", "i_t", "i_s", "s", "T", "H", "n_tokens", "CHUNK", "SAVE_CHECKPOINTS", "STORE_FINAL",
    "HAS_INITIAL", "VARLEN", "cu_seqlens", "chunk_offsets", "float", "range",
) + tuple(f"tok_{i}" for i in range(64))


@dataclass(frozen=True)
class Layout:
    """Which dim lies on each register axis (None: the axis is not used)."""
    row: str | None
    col: str | None

    @property
    def dim_axis(self) -> dict:
        return {d: a for d, a in ((self.row, ROW), (self.col, COL)) if d is not None}


def layout_of(rec: ir.Recurrence) -> Layout:
    """Row dim = first dim of the matrix states, column dim = their last dim;
    without matrix states the column dim is the vector states' dim."""
    for d in rec.inputs + rec.params:
        square = [x for x in set(d.shape) if list(d.shape).count(x) > 1]
        if square:
            raise Unsupported(f"{d.name}[{', '.join(map(str, d.shape))}] is a square matrix over {square[0]} (a "
                              f"recurrent matrix, as in a cell): the registers hold one tile of the state, not a "
                              f"[{square[0]}, {square[0]}] matrix; the cell strategy lowers this")
    matrices = {tuple(s.shape) for s in rec.states if len(s.shape) == 2}
    if any(len(s.shape) > 2 for s in rec.states):
        raise Unsupported("states of rank > 2 are not lowered")
    if len(matrices) > 1:
        raise Unsupported("matrix states of different shapes: " + ", ".join(str(list(m)) for m in matrices))
    if matrices:
        row, col = next(iter(matrices))
        if row == col:
            raise Unsupported(f"a square state [{row}, {col}] has no column dim to tile")
        return Layout(row, col)
    vector_dims = {s.shape[0] for s in rec.states if len(s.shape) == 1}
    if len(vector_dims) > 1:
        raise Unsupported("vector states over different dims: " + ", ".join(map(str, vector_dims)))
    col = next(iter(vector_dims)) if vector_dims else None
    others = {d for t in rec.inputs + rec.params for d in t.shape[-1:] if d != col}
    if len(others) > 1:
        raise Unsupported("inputs over more than one dim besides the state's: " + ", ".join(map(str, others)))
    return Layout(next(iter(others)) if others else None, col)


# ---- addressing ----------------------------------------------------------------

class Addresses:
    """Offsets of a value inside one slab (one token of an input, one sequence
    of a state): the text of `offsets` and of its mask, and the slab size.
    `axes` is the kernel's register order of a two-axis value."""

    def __init__(self, dim_names: dict, layout: Layout, tiles: dict, axes: tuple):
        self.dim_names, self.layout, self.tiles, self.axes = dim_names, layout, tiles, axes

    def size(self, d) -> str:
        return str(d) if isinstance(d, int) else self.dim_names[d]

    def slab(self, shape) -> str:
        return " * ".join(self.size(d) for d in shape) if shape else "1"

    def index(self, axis: str, axes: tuple, name: str | None = None) -> str:
        name = name or ("rows" if axis == ROW else "cols")
        if len(axes) < 2:
            return name
        return f"{name}[:, None]" if axes.index(axis) == 0 else f"{name}[None, :]"

    def offsets(self, shape: tuple, axes: tuple, slice_index=None) -> str:
        """Offsets within a slab of `shape`; `slice_index` picks one slice of a stacked leading dim."""
        dims = shape[1:] if slice_index is not None else shape
        terms = []
        if slice_index is not None and slice_index != 0:
            stride = self.slab(dims)
            terms.append(str(slice_index) if stride == "1" else f"{slice_index} * {stride}")
        for i, d in enumerate(dims):
            axis = self.layout.dim_axis[d]
            stride = self.slab(dims[i + 1:])
            index = self.index(axis, axes)
            terms.append(index if stride == "1" else f"{index} * {stride}")
        return " + ".join(terms) if terms else "0"

    def mask(self, axes: tuple) -> str | None:
        return {(): None, (ROW,): "row_mask", (COL,): "col_mask", self.axes: "tile_mask"}[axes]

    def scratch(self, axes: tuple) -> tuple:
        """(tile size, local offsets) of a value kept whole-tile in scratch memory, as held."""
        size = {ROW: self.tiles["BR"], COL: self.tiles["BC"]}
        local = {ROW: "rows", COL: "cols_in_tile"}
        if not axes:
            return "1", "0"
        if len(axes) == 1:
            return size[axes[0]], local[axes[0]]
        first, last = axes
        return (f"{size[first]} * {size[last]}", f"{self.index(first, axes, local[first])} * {size[last]} + "
                                                 f"{self.index(last, axes, local[last])}")


def _unit(base: str) -> str:
    return base[:-4] if base.endswith(" * 1") else base


def load_text(ptr: str, base: str, offsets: str, mask: str | None) -> str:
    where = f"{ptr} + {_unit(base)}" + ("" if offsets == "0" else f" + {offsets}")
    if mask is None:
        return f"tl.load({where}).to(tl.float32)"
    return f"tl.load({where}, mask={mask}, other=0.0).to(tl.float32)"


def store_text(ptr: str, base: str, offsets: str, mask: str | None, value: str, cast: bool = False) -> str:
    where = f"{ptr} + {_unit(base)}" + ("" if offsets == "0" else f" + {offsets}")
    if cast:
        value = f"{value}.to({ptr}.dtype.element_ty)"
    return f"tl.store({where}, {value})" if mask is None else f"tl.store({where}, {value}, mask={mask})"


# ---- the lowering ----------------------------------------------------------------

class RecurrentKernels:
    """The kernels' code and the host code around them for one recurrence, with a
    state tile held in the register order `axes` (`emit.ORDERS`). `saved_axes` is
    the order the checkpoints are stored in: the forward's, when these are the
    backward's kernels and the two orders differ."""

    def __init__(self, rec: ir.Recurrence, tiles: dict, axes: tuple, saved_axes: tuple | None = None):
        self.rec = rec
        self.tile_axes, self.saved_axes = axes, saved_axes or axes
        self.fwd_kernel, self.bwd_kernel = f"{rec.name}_fwd_kernel", f"{rec.name}_bwd_kernel"
        self.layout = layout_of(rec)
        self.graph = Graph(axes)
        self.step = StepLowering(rec, self.graph, self.layout.dim_axis).lower()
        self.col_tiled = self.layout.col is not None and not self.step.col_reduced
        self.plan_tiles = tiles
        self.namer = Namer(SKELETON_NAMES)
        self.dim_names = {d.name: self.namer.fresh(d.name) for d in rec.dims}
        row, col = self.layout.row, self.layout.col
        self.tiles = {
            "BR": self.namer.fresh("B" + row) if row else "1",
            "BC": self.namer.fresh("B" + col) if col else "1",
            "row_mask": "row_mask", "col_mask": "col_mask", "tile_mask": "tile_mask",
        }
        self.addr = Addresses(self.dim_names, self.layout, self.tiles, axes)
        self.names = {}  # decl name -> {"ptr": .., "value": .., ...}
        for kind, decls in (("input", rec.inputs), ("param", rec.params), ("output", rec.outputs),
                            ("state", rec.states)):
            for d in decls:
                self.names[d.name] = self.tensor_names(kind, d.name)
        self.consts = {c.name: self.namer.fresh(c.name) for c in rec.consts}
        self.axes = {d.name: self.decl_axes(d) for d in rec.inputs + rec.params + rec.outputs + rec.states}
        self.build_adjoint()

    # --- names
    def tensor_names(self, kind: str, name: str) -> dict:
        fresh = self.namer.fresh
        out = {"ptr": fresh(f"{name}_ptr"), "value": f"b_{name}"}
        if kind in ("input", "param"):
            out["grad"] = fresh(f"d{name}_ptr")
        if kind == "output":
            out["cotangent"] = fresh(f"d{name}_ptr")
        if kind == "state":
            out.update(initial=fresh(f"initial_{name}_ptr"), final=fresh(f"final_{name}_ptr"),
                       checkpoint=fresh(f"checkpoint_{name}_ptr"), scratch=fresh(f"scratch_{name}_ptr"),
                       dfinal=fresh(f"dfinal_{name}_ptr"), dinitial=fresh(f"dinitial_{name}_ptr"))
        return out

    def decl_axes(self, d: ir.TensorDecl) -> tuple:
        dims = [x for x in d.shape if x in self.layout.dim_axis]
        return tuple(a for a in self.tile_axes if a in {self.layout.dim_axis[x] for x in dims})

    def is_tiled(self, axes) -> bool:
        return COL in axes and self.col_tiled

    # --- the adjoint step
    def build_adjoint(self) -> None:
        g, step = self.graph, self.step
        self.tile0 = g.leaf("tile0", "tile0")
        pairs = []
        for name, node in step.outputs.items():
            cot = g.leaf("cotangent", ("output", name), node.axes)
            pairs.append((node, cot if self.is_tiled(node.axes) else g.mul(cot, self.tile0)))
        for name, node in step.new_states.items():
            pairs.append((node, g.leaf("cotangent", ("state", name), node.axes)))
        adj = vjp(g, pairs)
        self.state_leaves = {s.name: g.leaf("state", s.name, self.axes[s.name]) for s in self.rec.states}
        self.d_prev = {s: g.broadcast(adj.get(n.index), n.axes) for s, n in self.state_leaves.items()}
        leaves = [n for n in g.nodes if n.op in ("input", "param")]
        self.d_leaves = {n.index: g.broadcast(adj.get(n.index), n.axes) for n in leaves if n.index in adj}
        self.adjoint_roots = list(self.d_prev.values()) + list(self.d_leaves.values())

    # --- leaves of a block of nodes
    def leaves(self, roots, op: str) -> list:
        """The leaves of kind `op` under roots, in declaration order (slices in order)."""
        order = {d.name: i for i, d in enumerate(self.rec.inputs + self.rec.params + self.rec.outputs
                                                  + self.rec.states)}
        key = lambda n: (order.get(n.attr if isinstance(n.attr, str) else n.attr[0] if n.op in ("input", "param")
                                   else n.attr[1], 0), str(n.attr))
        return sorted((n for n in reachable(roots) if n.op == op), key=key)

    def leaf_value_name(self, node) -> str:
        """The register name of a state, input (slice) or param leaf: b_S, b_k0, b_w."""
        name, j = (node.attr, None) if isinstance(node.attr, str) else node.attr
        return f"b_{name}" if j is None else f"b_{name}{j}"

    def input_load(self, node, tok: str) -> str:
        name, j = node.attr
        decl = self.rec.decl(name)
        a = self.addr
        base = f"({tok} * H + i_h) * {a.slab(decl.shape)}"
        return load_text(self.names[name]["ptr"], base, a.offsets(decl.shape, node.axes, j), a.mask(node.axes))

    def param_load(self, node) -> str:
        name, j = (node.attr, None) if isinstance(node.attr, str) else node.attr
        decl = self.rec.decl(name)
        a = self.addr
        return load_text(self.names[name]["ptr"], f"i_h * {a.slab(decl.shape)}",
                         a.offsets(decl.shape, node.axes, j), a.mask(node.axes))

    def state_access(self, name: str, which: str, base: str) -> tuple:
        """(pointer, base, offsets, mask) of a state's tile in the initial, final,
        checkpoint, ... tensor. Kernels see every state tensor as held (one memory
        layout, one register layout, no conversion per step): with the order VK the
        host transposes the initial and final states (`_held`, `_public`), with KV
        they are held as the op sees them. Checkpoints are stored as the forward
        holds them: a backward of the other order loads them across (once per chunk)."""
        decl = self.rec.decl(name)
        a = self.addr
        axes = self.axes[name]
        shape = self.held_shape(decl, self.saved_axes if which == "checkpoint" else self.tile_axes)
        return self.names[name][which], f"{base} * {a.slab(shape)}", a.offsets(shape, axes), a.mask(axes)

    def transposed(self, name: str) -> bool:
        decl = self.rec.decl(name)
        return tuple(decl.shape) != self.held_shape(decl)

    def held_shape(self, decl, axes: tuple | None = None) -> tuple:
        """A state's dims in register order `axes` (by default the kernels'; a
        matrix state [K, V] is held [V, K] with the order VK)."""
        if len(decl.shape) != 2:
            return tuple(decl.shape)
        by_axis = {self.layout.dim_axis[d]: d for d in decl.shape}
        return tuple(by_axis[a] for a in axes or self.tile_axes)

    def scratch_access(self, name: str, slot: str = "t - t0") -> tuple:
        """The scratch tile of a state: one slot per R steps of a chunk (R = REG_STEPS)."""
        size, local = self.addr.scratch(self.axes[name])
        return self.names[name]["scratch"], f"(program * {self.slots} + {slot}) * {size}", local

    @property
    def reg_steps(self) -> int:
        chosen = self.plan_tiles.get("REG_STEPS", 1)
        return reg_steps_for(self.tile_ops()) if chosen == "auto" else int(chosen)

    def tile_ops(self) -> int:
        """Operations on whole state tiles in one adjoint step: a measure of its register need."""
        return sum(1 for n in reachable(self.adjoint_roots)
                   if len(n.axes) == 2 and n.op not in ("state", "cotangent", "input", "param"))

    @property
    def slots(self) -> str:
        r = self.reg_steps
        return "CHUNK" if r == 1 else f"((CHUNK + {r - 1}) // {r})"

    def invariant(self, roots) -> list:
        """Nodes computed from params, consts and numbers only: hoisted out of the loop."""
        fixed = {}
        for n in reachable(roots):
            if n.op in ("param", "const", "num", "dim"):
                fixed[n.index] = True
            elif n.op in ("input", "state", "cotangent", "tile0", "zeros"):
                fixed[n.index] = False
            else:
                fixed[n.index] = all(fixed[c.index] for c in n.args)
        return [n for n in reachable(roots) if fixed[n.index] and n.op not in ("num",)]

    def setup_emitter(self, roots, lines: list) -> Emitter:
        """Emit the loop-invariant part (params, consts, what depends only on them)."""
        em = Emitter(self.namer, self.tiles, self.tile_axes)
        for n in self.leaves(roots, "const"):
            em.names[n.index] = self.consts[n.attr]
        for n in self.leaves(roots, "dim"):
            em.names[n.index] = f"({self.dim_names[n.attr]} * 1.0)"
        em.names[self.tile0.index] = "tile0"
        for n in self.leaves(roots, "param"):
            name = self.namer.fresh(self.leaf_value_name(n))
            lines.append(f"{name} = {self.param_load(n)}")
            em.names[n.index] = name
        em.emit([n for n in self.invariant(roots) if n.op != "param"], lines, "w")
        return em

    def loop_emitter(self, setup: Emitter) -> Emitter:
        return Emitter(copy.deepcopy(self.namer), self.tiles, self.tile_axes, setup.names)

    # --- forward kernel
    def state_init_lines(self) -> list:
        lines = []
        for s in self.rec.states:
            ptr, base, offs, mask = self.state_access(s.name, "initial", "i_nh")
            value = self.names[s.name]["value"]
            shape = Emitter(self.namer, self.tiles, self.tile_axes).shape(self.axes[s.name])
            init = repr(float(s.init)) if abs(s.init) != float("inf") else ('-' if s.init < 0 else '') + 'float("inf")'
            lines += ["if HAS_INITIAL:",
                      f"    {value} = {load_text(ptr, base, offs, mask)}",
                      "else:",
                      f"    {value} = tl.full({shape}, {init}, tl.float32)"]
        return lines

    def state_store_lines(self, which: str, base: str) -> list:
        lines = []
        for s in self.rec.states:
            ptr, b, offs, mask = self.state_access(s.name, which, base)
            line = store_text(ptr, b, offs, mask, self.names[s.name]["value"])
            lines += [line] if self.is_tiled(self.axes[s.name]) or not self.col_tiled else \
                ["if i_v == 0:", "    " + line]
        return lines

    def prefetched(self, loads: list, first: str, following: str, body_namer: Namer) -> tuple:
        """Software pipelining of per-step loads. `loads` are (value name, load text
        for a token expression); returns (lines before the loop loading the first
        step's values at `first`, lines at the top of the body loading the next
        step's at `following`, lines at the end of the body rotating them in)."""
        before, top, rotate = ([f"tok_next = {first}"] if loads and first != "tok_next" else []), [], []
        for value, load in loads:
            nxt = body_namer.fresh("next_" + value[2:] if value.startswith("b_") else "next_" + value)
            before.append(f"{value} = {load('tok_next')}")
            top.append(f"{nxt} = {load(following)}")
            rotate.append(f"{value} = {nxt}")
        return before, top, rotate

    def input_loads(self, leaves) -> list:
        return [(self.leaf_value_name(n), lambda tok, n=n: self.input_load(n, tok)) for n in leaves]

    def cotangent_loads(self, leaves, names: dict, namer: Namer, suffix: str = "") -> list:
        loads = []
        for n in leaves:
            kind, name = n.attr
            if kind == "state":
                names[n.index] = f"b_d{name}"
                continue
            decl = self.rec.decl(name)
            a = self.addr
            value = namer.fresh(f"b_d{name}{suffix}")
            names[n.index] = value
            loads.append((value, lambda tok, decl=decl, n=n, name=name: load_text(
                self.names[name]["cotangent"], f"({tok} * H + i_h) * {a.slab(decl.shape)}",
                a.offsets(decl.shape, n.axes), a.mask(n.axes))))
        return loads

    def scratch_loads(self, leaves) -> list:
        loads = []
        for n in leaves:
            loads.append((self.names[n.attr]["value"], lambda tok, n=n: "tl.load({} + {} + {})".format(
                *self.scratch_access(n.attr, f"{tok} - bos - t0"))))
        return loads

    # --- forward kernel
    def forward(self) -> dict:
        step = self.step
        roots = list(step.new_states.values()) + list(step.outputs.values())
        setup = []
        em = self.setup_emitter(roots, setup)
        setup += self.state_init_lines()
        loop = self.loop_emitter(em)
        inputs = self.leaves(roots, "input")
        for n in inputs:
            loop.names[n.index] = self.leaf_value_name(n)
        before, body, rotate = self.prefetched(self.input_loads(inputs), "tok_next", "tok_next", loop.namer)
        if before:
            setup += ["tok_next = tl.maximum(tl.minimum(bos, eos - 1), 0)  # the first step's inputs"] + before
        for s, n in self.state_leaves.items():
            loop.names[n.index] = self.names[s]["value"]
        loop.emit(roots, body)
        for name, node in step.outputs.items():
            decl = self.rec.decl(name)
            a = self.addr
            line = store_text(self.names[name]["ptr"], f"(tok * H + i_h) * {a.slab(decl.shape)}",
                              a.offsets(decl.shape, node.axes), a.mask(node.axes), loop.names[node.index], cast=True)
            body += [line] if self.is_tiled(node.axes) or not self.col_tiled else ["if i_v == 0:", "    " + line]
        for s, node in step.new_states.items():
            body.append(f"{self.names[s]['value']} = {loop.names[node.index]}")
        return {
            "fwd_setup": setup,
            "fwd_step": body + rotate,
            "fwd_checkpoint": self.state_store_lines("checkpoint", "((chunk0 + i_c) * H + i_h)"),
            "fwd_final": self.state_store_lines("final", "i_nh"),
        }

    # --- backward kernel
    def backward(self) -> dict:
        step = self.step
        replay_roots = list(step.new_states.values())
        roots = self.adjoint_roots
        setup = []
        em = self.setup_emitter(replay_roots + roots, setup)
        em.names[self.tile0.index] = "tile0"
        setup.insert(0, "tile0 = tl.where(i_v == 0, 1.0, 0.0)")
        for s in self.rec.states:
            ptr, base, offs, mask = self.state_access(s.name, "dfinal", "i_nh")
            value = f"b_d{s.name}"
            tail = "" if self.is_tiled(self.axes[s.name]) else " * tile0"
            setup.append(f"{value} = {load_text(ptr, base, offs, mask)}{tail}")
        param_acc = {}
        for n in self.leaves(roots, "param"):
            if n.index not in self.d_leaves:
                continue
            acc = self.namer.fresh(f"acc_d{self.leaf_value_name(n)[2:]}")
            param_acc[n.index] = acc
            zeros = Emitter(self.namer, self.tiles, self.tile_axes).text(self.graph.broadcast(None, n.axes))
            setup.append(f"{acc} = {zeros}")
        reload, replay = self.replay_lines(em, replay_roots)
        if self.reg_steps == 1:
            before, body = self.adjoint_lines(em, roots, param_acc)
            reverse = before + ["for i_t in range(0, t1 - t0):", "    t = t1 - 1 - i_t", "    tok = bos + t"] + \
                ["    " + line for line in body]
        else:
            reverse = self.adjoint_subchunk_lines(em, roots, param_acc)
        return {
            "bwd_setup": setup,
            "bwd_reload": reload,
            "bwd_replay": replay,
            "bwd_reverse": reverse,
            "bwd_final": self.backward_final_lines(param_acc),
        }

    def replay_lines(self, em: Emitter, roots) -> tuple:
        """(before the replay loop, its body): the chunk's steps from its checkpoint, state update only."""
        loop = self.loop_emitter(em)
        reload = [f"{self.names[s.name]['value']} = "
                  f"{load_text(*self.state_access(s.name, 'checkpoint', '((chunk0 + c) * H + i_h)'))}"
                  for s in self.rec.states]
        inputs = self.leaves(roots, "input")
        for n in inputs:
            loop.names[n.index] = self.leaf_value_name(n)
        before, body, rotate = self.prefetched(self.input_loads(inputs), "bos + t0", "tok_next", loop.namer)
        if body:
            body.insert(0, "tok_next = tl.minimum(tok + 1, bos + t1 - 1)")
        r = self.reg_steps
        if r > 1:
            body.append(f"if (t - t0) % {r} == 0:  # the scratch keeps every {r}th incoming state")
        for s, n in self.state_leaves.items():
            ptr, base, local = self.scratch_access(s, "t - t0" if r == 1 else f"(t - t0) // {r}")
            body.append(("    " if r > 1 else "") + store_text(ptr, base, local, None, self.names[s]["value"]))
            loop.names[n.index] = self.names[s]["value"]
        loop.emit(roots, body)
        body += [f"{self.names[s]['value']} = {loop.names[node.index]}" for s, node in self.step.new_states.items()]
        return reload + before, body + rotate

    def adjoint_lines(self, em: Emitter, roots, param_acc: dict) -> tuple:
        """(before the reverse loop, its body): one step's recompute and adjoint, the
        previous step's state (from scratch), inputs and output gradients prefetched."""
        loop = self.loop_emitter(em)
        reached = {n.index for n in reachable(roots)}
        states = [n for n in self.state_leaves.values() if n.index in reached]
        inputs = self.leaves(roots, "input")
        for n in states:
            loop.names[n.index] = self.names[n.attr]["value"]
        for n in inputs:
            loop.names[n.index] = self.leaf_value_name(n)
        loads = self.scratch_loads(states) + self.input_loads(inputs) + \
            self.cotangent_loads(self.leaves(roots, "cotangent"), loop.names, loop.namer)
        before, body, rotate = self.prefetched(loads, "bos + t1 - 1", "tok_next", loop.namer)
        if body:
            body.insert(0, "tok_next = tl.maximum(tok - 1, bos + t0)")
        loop.emit(roots, body, "y")
        body += self.step_gradient_lines(loop.names, param_acc, "tok")
        return before, body + rotate

    def step_gradient_lines(self, names: dict, param_acc: dict, tok: str) -> list:
        """After one step's adjoint: param gradients added to their accumulators, input gradients
        stored at `tok`, and the state cotangents passed to the step before."""
        lines = []
        for leaf_index, grad in self.d_leaves.items():
            leaf = self.graph.nodes[leaf_index]
            if leaf.op == "param":
                acc = param_acc[leaf_index]
                lines.append(f"{acc} = {acc} + {names[grad.index]}")
            else:
                lines.append(self.input_grad_store(leaf, names[grad.index], tok))
        return lines + [f"b_d{s} = {names[self.d_prev[s].index]}" for s in self.state_leaves]

    def adjoint_subchunk_lines(self, em: Emitter, roots, param_acc: dict) -> list:
        """The reverse walk in sub-chunks of R steps (R = REG_STEPS): a sub-chunk's
        incoming state comes from scratch, its R - 1 later states are replayed in
        registers (the code is unrolled R times), then its steps run their adjoints,
        last step first; steps past the chunk's end are skipped."""
        r, step = self.reg_steps, self.step
        namer = copy.deepcopy(self.namer)
        replay_roots = list(step.new_states.values())
        needed = reachable(roots + replay_roots)
        inputs = [n for n in needed if n.op == "input"]
        lines = [f"for i_s in range(0, tl.cdiv(t1 - t0, {r})):",
                 f"    s = t0 + (tl.cdiv(t1 - t0, {r}) - 1 - i_s) * {r}"]
        body = ["tok_0 = bos + s"] + [f"tok_{i} = tl.minimum(bos + s + {i}, bos + t1 - 1)" for i in range(1, r)]
        names = []  # per step: leaf node index -> register name
        for i in range(r):
            leaf_names = {}
            for n in inputs:
                value = namer.fresh(f"{self.leaf_value_name(n)}_{i}")
                leaf_names[n.index] = value
                body.append(f"{value} = {self.input_load(n, f'tok_{i}')}")
            names.append(leaf_names)
        for s_name, n in self.state_leaves.items():
            value = namer.fresh(f"{self.names[s_name]['value']}_0")
            names[0][n.index] = value
            ptr, base, local = self.scratch_access(s_name, f"(s - t0) // {r}")
            body.append(f"{value} = tl.load({ptr} + {base} + {local})")
        cotangents = self.leaves(roots, "cotangent")
        for i in range(r):
            for value, load in self.cotangent_loads(cotangents, names[i], namer, f"_{i}"):
                body.append(f"{value} = {load(f'tok_{i}')}")
        shared = [{} for _ in range(r)]  # what the replay computed that the adjoint reuses
        for i in range(r - 1):  # replay the sub-chunk's later states in registers
            em_i = Emitter(namer, self.tiles, self.tile_axes, {**em.names, **names[i]})
            em_i.emit(replay_roots, body, "x")
            for s_name, node in step.new_states.items():
                names[i + 1][self.state_leaves[s_name].index] = em_i.names[node.index]
            # new states stay live anyway; vectors and scalars are cheap to keep; tiles are recomputed
            shared[i] = {n.index: em_i.names[n.index] for n in reachable(replay_roots)
                         if n.op not in LEAVES and (n in replay_roots or len(n.axes) < 2)}
        for i in reversed(range(r)):
            block = []
            em_i = Emitter(namer, self.tiles, self.tile_axes, {**em.names, **names[i], **shared[i]})
            em_i.emit(roots, block, "y")
            block += self.step_gradient_lines(em_i.names, param_acc, f"tok_{i}")
            if i == 0:
                body += [f"# step s + {i}"] + block
            else:
                body += [f"if s + {i} < t1:  # step s + {i}"] + ["    " + line for line in block]
        return lines + ["    " + line for line in body]

    def input_grad_store(self, leaf, value: str, tok: str = "tok") -> str:
        name, j = leaf.attr
        decl = self.rec.decl(name)
        a = self.addr
        slab = a.slab(decl.shape)
        base = f"({tok} * H + i_h) * {slab}"
        if not self.is_tiled(leaf.axes) and self.col_tiled:
            base = f"(i_v * n_tokens * H + {tok} * H + i_h) * {slab}"
        return store_text(self.names[name]["grad"], base, a.offsets(decl.shape, leaf.axes, j), a.mask(leaf.axes), value)

    def backward_final_lines(self, param_acc: dict) -> list:
        lines = ["if HAS_INITIAL:"]
        for s in self.rec.states:
            axes = self.axes[s.name]
            base = "i_nh" if self.is_tiled(axes) or not self.col_tiled else "(i_v * tl.num_programs(1) + i_nh)"
            ptr, b, offs, mask = self.state_access(s.name, "dinitial", base)
            lines.append("    " + store_text(ptr, b, offs, mask, f"b_d{s.name}"))
        for leaf_index, acc in param_acc.items():
            leaf = self.graph.nodes[leaf_index]
            name, j = (leaf.attr, None) if isinstance(leaf.attr, str) else leaf.attr
            decl = self.rec.decl(name)
            a = self.addr
            lines.append(store_text(self.names[name]["grad"], f"(i_v * tl.num_programs(1) + i_nh) * {a.slab(decl.shape)}",
                                    a.offsets(decl.shape, leaf.axes, j), a.mask(leaf.axes), acc))
        return lines

    # --- kernel signatures: (kernel argument, comment, host expression), so the launch matches the kernel
    def common_tail(self, extra=()) -> list:
        dims = [(f"{self.dim_names[d.name]}: tl.constexpr", "", f"dims[{d.name!r}]") for d in self.rec.dims]
        tiles = [(f"{t}: tl.constexpr", "", h) for t, h in ((self.tiles["BR"], "BR"), (self.tiles["BC"], "BC"))
                 if t != "1"]
        return ([("cu_seqlens", "[N + 1] sequence starts, or None", "call.cu_seqlens"),
                 ("chunk_offsets", "[N] each sequence's first checkpoint, or None", "offsets")]
                + [(self.consts[c.name], "const", f"call.consts[{c.name!r}]") for c in self.rec.consts]
                + [("T", "steps per batch row", "T")] + list(extra)
                + [("H: tl.constexpr", "", "H")] + dims + tiles
                + [("CHUNK: tl.constexpr", "steps between checkpoints", "CHUNK")])

    def shape_text(self, lead: str, shape) -> str:
        dims = [lead] if lead else []
        dims += [str(d) if isinstance(d, int) else f"dims[{d!r}]" for d in shape]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"

    def sizes_text(self, lead: str, shape) -> str:
        """shape_text without the parentheses: torch.empty(*sizes) parses faster than a tuple."""
        return self.shape_text(lead, shape)[1:-1].rstrip(",")

    def fwd_args(self) -> list:
        rec, n = self.rec, self.names
        args = [(n[d.name]["ptr"], f"input {d.name} [B, T, H{''.join(', ' + str(x) for x in d.shape)}]",
                 f"call.inputs[{d.name!r}]") for d in rec.inputs]
        args += [(n[d.name]["ptr"], f"param {d.name} [H{''.join(', ' + str(x) for x in d.shape)}]",
                  f"call.params[{d.name!r}]") for d in rec.params]
        args += [(n[d.name]["ptr"], f"output {d.name}, in the inputs' dtype", f"outputs[{d.name!r}]")
                 for d in rec.outputs]
        for i, s in enumerate(rec.states):
            held = "_held(initial.get({!r}))" if self.transposed(s.name) else "initial.get({!r})"
            args += [(n[s.name]["initial"], f"state {s.name} [N, H, ...] as held, or None", held.format(s.name)),
                     (n[s.name]["final"], "fp32, as held", f"finals[{s.name!r}]"),
                     (n[s.name]["checkpoint"], "[chunks, H, ...] fp32", f"saved[{i}]")]
        args += self.common_tail()
        args += [("HAS_INITIAL: tl.constexpr", "", "bool(initial)"), ("STORE_FINAL: tl.constexpr", "", "True"),
                 ("SAVE_CHECKPOINTS: tl.constexpr", "", "save"), ("VARLEN: tl.constexpr", "", "offsets is not None")]
        return args

    def bwd_args(self) -> list:
        rec, n = self.rec, self.names
        args = [(n[d.name]["ptr"], f"input {d.name}", f"call.inputs[{d.name!r}]") for d in rec.inputs]
        args += [(n[d.name]["ptr"], f"param {d.name}", f"call.params[{d.name!r}]") for d in rec.params]
        args += [(n[d.name]["cotangent"], f"gradient of output {d.name}", f"d_out[{d.name!r}]") for d in rec.outputs]
        for i, s in enumerate(rec.states):
            held = "_held(d_final[{!r}])" if self.transposed(s.name) else "d_final[{!r}]"
            args += [(n[s.name]["dfinal"], f"gradient of the final {s.name}, as held", held.format(s.name)),
                     (n[s.name]["checkpoint"], "", f"saved[{i}]"),
                     (n[s.name]["scratch"], "[programs, CHUNK, tile] fp32", f"scratch[{s.name!r}]"),
                     (n[s.name]["dinitial"], "gradient of the initial state, or None", f"d_initial[{s.name!r}]")]
        args += [(n[d.name]["grad"], "fp32" + (", [tiles, ...] partial sums" if self.partial(d.name) else ""),
                  f"grads[{d.name!r}]") for d in rec.inputs]
        args += [(n[d.name]["grad"], "fp32 [tiles, N, H, ...] partial sums", f"grads[{d.name!r}]") for d in rec.params]
        args += self.common_tail([("n_tokens", "B * T", "B * T")])
        args += [("HAS_INITIAL: tl.constexpr", "", "bool(initial)"), ("VARLEN: tl.constexpr", "", "offsets is not None")]
        return args

    def partial(self, name: str) -> bool:
        """Is this input's gradient a partial sum per column tile?"""
        return self.col_tiled and not self.is_tiled(self.axes[name])

    def launch(self, kernel: str, args: list, warps: str) -> list:
        lines = [f"{kernel}[(NV, N * H)]("]
        lines += [f"    {host},  # {arg.split(':')[0]}" for arg, _, host in args]
        lines += [f"    num_warps={warps},", ")"]
        return lines

    def prologue(self) -> list:
        lines = [
            "i_v = tl.program_id(0)",
            "i_nh = tl.program_id(1).to(tl.int64)  # offsets below are int64",
            "i_n = i_nh // H",
            "i_h = i_nh % H",
            "if VARLEN:",
            "    bos = tl.load(cu_seqlens + i_n).to(tl.int64)",
            "    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)",
            "    chunk0 = tl.load(chunk_offsets + i_n).to(tl.int64)",
            "else:",
            "    bos = i_n * T",
            "    eos = bos + T",
            "    chunk0 = i_n * tl.cdiv(T, CHUNK)",
            "seq_len = eos - bos",
        ]
        row, col, br, bc = self.layout.row, self.layout.col, self.tiles["BR"], self.tiles["BC"]
        # a mask known to be all true when the tile fits exactly: loads and stores then vectorize
        if row:
            k = self.dim_names[row]
            lines += [f"rows = tl.arange(0, {br})",
                      f"if {k} == {br}:",
                      f"    row_mask = tl.full([{br}], 1, tl.int1)",
                      "else:",
                      f"    row_mask = rows < {k}"]
        if col:
            v = self.dim_names[col]
            lines += [f"cols_in_tile = tl.arange(0, {bc})", f"cols = i_v * {bc} + cols_in_tile",
                      f"if {v} % {bc} == 0:",
                      f"    col_mask = tl.full([{bc}], 1, tl.int1)",
                      "else:",
                      f"    col_mask = cols < {v}"]
        if row and col:
            first, last = ({ROW: "row_mask", COL: "col_mask"}[a] for a in self.tile_axes)
            held = ", ".join({ROW: br, COL: bc}[a] for a in self.tile_axes)
            lines.append(f"tile_mask = {first}[:, None] & {last}[None, :]  # a state tile is held [{held}]")
        return lines

    # --- host code
    def tiles_body(self) -> list:
        row, col = self.layout.row, self.layout.col
        lines = [f"BR = _pow2(dims[{row!r}])" if row else "BR = 1"]
        if col and self.col_tiled:
            lines += [f"BC = min(_pow2(dims[{col!r}]), tiles['BV_bwd' if backward else 'BV'])",
                      f"return BR, BC, _cdiv(dims[{col!r}], BC)"]
        elif col:
            lines += [f"BC = _pow2(dims[{col!r}])  # a step sums over {col}: one tile",
                      "return BR, BC, 1"]
        else:
            lines += ["return BR, 1, 1"]
        return lines

    def checkpoints_body(self) -> list:
        lines = ["CHUNK = _launch(call)['CHUNK']",
                 "if not save:",
                 "    chunks = 0",
                 "elif call.cu_seqlens is None:",
                 "    chunks = call.N * _cdiv(call.T, CHUNK)",
                 "else:  # sum of ceil(length / CHUNK) over the sequences is at most this",
                 "    chunks = call.T // CHUNK + call.N",
                 "dims = call.dims"]
        shapes = ", ".join(self.shape_text("chunks, call.H", self.held_shape(s)) for s in self.rec.states)
        lines.append(f"return tuple(torch.empty(shape, dtype=torch.float32, device=device) for shape in ({shapes},))")
        return lines

    def host_header(self, backward: bool = False) -> list:
        first = self.rec.inputs[0].name
        return ["dims = call.dims",
                "B, T, H, N = call.B, call.T, call.H, call.N",
                f"device = call.inputs[{first!r}].device",
                "tiles = _launch(call)",
                "BR, BC, NV = _tiles(dims, tiles, backward=True)" if backward else "BR, BC, NV = _tiles(dims, tiles)",
                "CHUNK = tiles['CHUNK']",
                "initial = call.initial_state or {}",
                "offsets = _chunk_offsets(call.cu_seqlens, CHUNK) if call.cu_seqlens is not None else None"]

    def forward_body(self) -> list:
        rec = self.rec
        first = rec.inputs[0].name
        lines = self.host_header()
        lines.append(f"dtype = call.inputs[{first!r}].dtype")
        lines.append("outputs = {")
        lines += [f"    {o.name!r}: torch.empty({self.sizes_text('B, T, H', o.shape)}, dtype=dtype, device=device),"
                  for o in rec.outputs]
        lines += ["}", "finals = {  # as the kernel holds them"]
        lines += [f"    {s.name!r}: torch.empty({self.sizes_text('N, H', self.held_shape(s))}, dtype=torch.float32, "
                  f"device=device)," for s in rec.states]
        lines += ["}",
                  "save = call.requires_grad",
                  "saved = _checkpoints(call, device, save)",
                  "if B * T == 0:",
                  "    return outputs, _fresh_states(_REC, call, device), saved"]
        lines += self.launch(self.fwd_kernel, self.fwd_args(), "tiles['num_warps']")
        transposed = [s.name for s in rec.states if self.transposed(s.name)]
        if transposed:
            lines += [f"for name in {transposed!r}:", "    finals[name] = _public(finals[name])"]
        lines.append("return outputs, finals, saved")
        return lines

    def backward_body(self) -> list:
        rec = self.rec
        lines = self.host_header(backward=True)
        lines.append("f32 = dict(dtype=torch.float32, device=device)")
        lines.append("d_out = {")
        lines += [f"    {o.name!r}: _or_zeros(d_outputs.get({o.name!r}), {self.shape_text('B, T, H', o.shape)}, f32),"
                  for o in rec.outputs]
        lines += ["}", "d_final = {"]
        lines += [f"    {s.name!r}: _or_zeros(d_finals.get({s.name!r}), {self.shape_text('N, H', s.shape)}, f32),"
                  for s in rec.states]
        lines += ["}", "if B * T == 0:",
                  "    return ({name: torch.zeros_like(x) for name, x in call.inputs.items()},",
                  "            {name: torch.zeros_like(x) for name, x in call.params.items()},",
                  "            {name: d_final[name] if name in initial else None for name in d_final})",
                  "d_initial = {"]
        for s in rec.states:
            lead = "NV, N, H" if self.partial(s.name) else "N, H"
            lines.append(f"    {s.name!r}: torch.empty({self.sizes_text(lead, self.held_shape(s))}, **f32) "
                         f"if {s.name!r} in initial else None,")
        r = self.reg_steps
        slots = "CHUNK" if r == 1 else f"_cdiv(CHUNK, {r})"
        lines += ["}", f"scratch = {{  # one incoming state per {r} steps of a chunk" if r > 1 else "scratch = {"]
        for s in rec.states:
            size = " * ".join({ROW: "BR", COL: "BC"}[a] for a in self.axes[s.name]) or "1"
            lines.append(f"    {s.name!r}: torch.empty(NV * N * H, {slots}, {size}, **f32),")
        lines += ["}", "grads = {"]
        for d in rec.inputs:
            lead = "NV, B, T, H" if self.partial(d.name) else "B, T, H"
            alloc = "empty" if self.fully_written(d.name) else "zeros"
            lines.append(f"    {d.name!r}: torch.{alloc}({self.sizes_text(lead, d.shape)}, **f32),")
        for d in rec.params:
            lines.append(f"    {d.name!r}: torch.zeros({self.sizes_text('NV, N, H', d.shape)}, **f32),")
        lines.append("}")
        lines += self.launch(self.bwd_kernel, self.bwd_args(), "tiles['num_warps_bwd']")
        lines.append("d_inputs = {")
        for d in rec.inputs:
            total = f"grads[{d.name!r}]" + (".sum(0)" if self.partial(d.name) else "")
            lines.append(f"    {d.name!r}: {total}.to(call.inputs[{d.name!r}].dtype),")
        lines += ["}", "d_params = {"]
        lines += [f"    {d.name!r}: grads[{d.name!r}].sum((0, 1)).to(call.params[{d.name!r}].dtype),"
                  for d in rec.params]
        lines += ["}", "d_states = {"]
        for s in rec.states:
            total = f"d_initial[{s.name!r}]" + (".sum(0)" if self.partial(s.name) else "")
            total = f"_public({total})" if self.transposed(s.name) else total
            lines.append(f"    {s.name!r}: {total}.to(initial[{s.name!r}].dtype) if {s.name!r} in initial else None,")
        lines += ["}", "return d_inputs, d_params, d_states"]
        return lines

    def fully_written(self, name: str) -> bool:
        """Does the backward kernel write every element of this input's gradient?"""
        slices = {self.graph.nodes[i].attr[1] for i in self.d_leaves
                  if self.graph.nodes[i].op == "input" and self.graph.nodes[i].attr[0] == name}
        if None in slices:
            return True
        decl = self.rec.decl(name)
        size = decl.shape[0] if decl.shape and isinstance(decl.shape[0], int) else \
            self.rec.fixed_dims.get(decl.shape[0]) if decl.shape else None
        return bool(slices) and size is not None and slices == set(range(size))

    def transposes(self) -> bool:
        """Does the host transpose any state for these kernels (`_held`, `_public`)?"""
        return any(self.transposed(s.name) for s in self.rec.states)

    def tile_text(self, axes: tuple | None = None) -> str:
        """The held tile of a matrix state in words, e.g. '[BV, BK] (K last: ...)'."""
        names = {ROW: self.layout.row, COL: self.layout.col}
        first, last = (names[a] for a in axes or self.tile_axes)
        return f"[B{first}, B{last}] ({last} last: a warp's lanes run along {last})"


def render_context(forward: RecurrentKernels, backward: RecurrentKernels) -> dict:
    """Everything the template needs: the forward kernel and its host code from
    `forward`, the backward's from `backward` (the same object when both kernels
    hold a state tile in the same order)."""
    context = {"fwd_kernel": forward.fwd_kernel, "bwd_kernel": forward.bwd_kernel,
               "col_dim": forward.layout.col,
               "fwd_prologue": forward.prologue(), "bwd_prologue": backward.prologue(),
               "fwd_args": arg_lines(forward.fwd_args()), "bwd_args": arg_lines(backward.bwd_args()),
               "tiles_body": forward.tiles_body(), "checkpoints_body": forward.checkpoints_body(),
               "forward_body": forward.forward_body(), "backward_body": backward.backward_body(),
               "transposes": forward.transposes() or backward.transposes(),
               "first_input": forward.rec.inputs[0].name}
    context.update(forward.forward())
    context.update(backward.backward())
    return context


def arg_lines(args: list) -> list:
    return [f"{arg},  # {comment}" if comment else f"{arg}," for arg, comment, _ in args]


DESIGN = (
    "Forward: the state stays in registers (fp32) for the whole sequence; the inputs of step t+1 are",
    "loaded before step t computes; every CHUNK steps the state is stored as a checkpoint (only when a",
    "gradient will be asked for).",
    "Backward: chunks in reverse. A chunk is replayed from its checkpoint (state update only), every",
    "REG_STEPS-th incoming state kept in a per-program scratch tile (L2-resident); then the chunk is",
    "walked backwards in sub-chunks of REG_STEPS steps: the sub-chunk's states are replayed in registers",
    "from its scratch tile, then each step, last first, runs its adjoint (reverse mode of the step body,",
    "recomputed from the step's incoming state), dState held in registers. Nothing is divided by a decay.",
    "Gradients of values without the column dim are partial sums per column tile, summed on the host:",
    "no atomics.",
)


def reg_steps_for(tile_ops: int) -> int:
    """Steps the backward replays in registers, from the adjoint step's tile operations.
    Compiled for sm_90 at K = 128, BV_bwd = 64, 8 warps: GLA's step (10 tile ops) fits two
    steps in 255 registers without spilling, mLSTM's (14) spills at two, gated DeltaNet's (22)
    fits one; vector states (no tile ops) are cheap at four."""
    if tile_ops == 0:
        return 4
    return 2 if tile_ops <= 12 else 1


def lower_recurrent(rec: ir.Recurrence, tiles: dict | None = None) -> Lowered:
    """Lower `rec` with the recurrent strategy and the given tiles (see `recc.plan`).
    Raises `Unsupported` (with the reason) when the spec does not fit the tile layout.

    Launch tiles: BV, BV_bwd (the column tiles of the forward and backward kernels), CHUNK
    (steps between checkpoints), num_warps, num_warps_bwd come from the solver at each call
    shape (`recc.tiles.launch_tiles`, templates/recurrent.constraints); those in `tiles`
    override it (rendered into the module's TILES, which tests and benchmarks also update).

    Compiled-in tiles: REG_STEPS, and ORDER / ORDER_bwd, the register order of a
    matrix state's tile in the forward / backward kernel: "VK" holds S[K, V] as
    [BV, BK], "KV" as [BK, BV] (ORDER_bwd defaults to ORDER)."""
    from ..plan import RECURRENT_TILES
    tiles = {**RECURRENT_TILES, **(tiles or {})}
    tiles["ORDER_bwd"] = tiles.get("ORDER_bwd") or tiles["ORDER"]
    fwd_axes, bwd_axes = tile_axes(tiles["ORDER"]), tile_axes(tiles["ORDER_bwd"])
    forward = RecurrentKernels(rec, tiles, fwd_axes)
    backward = forward if bwd_axes == fwd_axes else RecurrentKernels(rec, tiles, bwd_axes, saved_axes=fwd_axes)
    context = render_context(forward, backward)
    context["design"] = DESIGN
    row, col = forward.layout.row, forward.layout.col
    tiles = dict(tiles, REG_STEPS=forward.reg_steps)
    if row and col and fwd_axes == bwd_axes:
        layout = f"state tile {forward.tile_text()}, {row} whole per program"
    elif row and col:
        layout = (f"state tile {forward.tile_text()} in the forward, {backward.tile_text()} in the backward "
                  f"(checkpoints as the forward holds them), {row} whole per program")
    else:
        layout = f"state tile [B{col or row}]"
    compiled = ("REG_STEPS", "ORDER", "ORDER_bwd")
    overrides = {k: v for k, v in tiles.items() if k not in compiled}
    example = reference_tiles(rec, "recurrent")
    shown = {**(example or {}), **overrides}       # the header's example: the H100 model at the main shape
    if not forward.col_tiled:
        shown["BV"] = shown["BV_bwd"] = "whole"
    columns = (f"{col} in tiles of BV (backward: BV_bwd), one program per sequence, head and tile"
               if forward.col_tiled else f"{col} whole (a step sums over it, so it cannot be split)")
    steps = tiles["REG_STEPS"]
    why = (f"{layout}; {columns}; backward: a checkpoint every CHUNK steps, replayed {steps} "
           f"step{'s' if steps > 1 else ''} at a time in registers; BV, BV_bwd, CHUNK and warps from the solver "
           f"per call (H100, main shape: {described(example)})")
    context["tiles"] = literal(overrides)
    launch_dims, launch_kw = launch_shape(rec, "recurrent")
    if not launch_dims:      # the analysis does not list the strategy (forced by name): the kernels' own axes
        launch_dims = {"K": row or 1, "V": col or 1}
    context["launch_dims"] = "{" + ", ".join(f"{k!r}: {_dim_literal(v)}" for k, v in launch_dims.items()) + "}"
    context["launch_shape"] = literal(launch_kw)
    context["spec_key"] = spec_key(rec)
    tiles = dict(shown, **{k: tiles[k] for k in compiled})
    context["reg_steps"] = forward.reg_steps
    context["orders"] = (tiles["ORDER"], tiles["ORDER_bwd"])
    source = _environment().get_template("recurrent.py.jinja").render(**context)
    return Lowered("recurrent", source, why, tiles)


def _dim_literal(dim) -> str:
    """A dim of the solver's call as generated code: a spec dim's name (quoted) or a size."""
    if isinstance(dim, int) or (isinstance(dim, str) and dim.isidentifier()):
        return repr(dim)
    raise Unsupported(f"dim {dim!r} is neither a name nor a size")  # the checker guarantees this never happens


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
