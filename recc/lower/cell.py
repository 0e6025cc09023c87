"""Strategy `cell`: FlashRNN-style fused kernels for nonlinear cells.

A cell is a recurrence whose states are vectors (or scalars) per head, whose
step is elementwise except for products of a param matrix with a vector
(`R @ h`, `R[j] @ h`, `h @ R`, `R^T @ h`), like LSTM, GRU and sLSTM with a
head-wise recurrent matrix. Such a step is not associative; it runs as one
sequential kernel over time:

* grid `(H, cdiv(N, BB))`: a program owns one head and a tile of BB sequences
  (BB from the solver, `recc.tiles`), so the recurrent product of a step is a `tl.dot`
  of the [BB, D] state tile with each [D, D] slice of the head's matrix;
* states live in registers across the time loop; the param matrix is loaded
  once before the loop and kept on chip when it fits (`W_RESIDENT`; Triton puts
  it in shared memory), else read from L2 each step;
  the next step's inputs are loaded while this step computes;
* every sequence row carries its own start and length, so packed varlen
  batches (`cu_seqlens`) run in the same tile, rows masked once they end;
* the forward stores every step's states and (`save_dots`) every param-matrix
  product, fp32; the backward kernel walks time in reverse, rebuilds the step
  from them, and runs its adjoint: the step body differentiated in reverse
  mode over a tape of tile ops, one VJP rule per op (`_Adjoint`);
* param-matrix gradients either accumulate in registers over the whole sequence
  (dW += v^T g by tl.dot, written once per program) or, when those accumulators
  would crowd the registers, the per-step g and v are stored and dW is one GEMM
  after the loop (`dw` in the generated module's `_cell_tuning`).

The differentiation is local to this strategy: a tape of register-tile ops, with
masks for padded lanes and finished sequences. It does not use `recc.adjoint`,
which writes the backward step as IR per sequence (param increments such as
`outer(g, h)`); lowering that IR here would need those increments recognised
and summed over the tile's rows as one tl.dot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jinja2

from .. import ir
from ..errors import ReccError
from ..resources import templates_dir
from ..tiles import described, launch_shape, reference_tiles, spec_key
from . import Lowered, literal

MIN_DOT = 16          # tl.dot needs every side >= 16


class NotACell(ReccError):
    """The recurrence is outside the cell family; says which term and why."""

    def __init__(self, rec: ir.Recurrence, reason: str, pos: ir.Pos | None = None):
        where = f"{rec.file}:{pos}: " if pos is not None and pos.line else f"{rec.file}: "
        super().__init__(f"{where}cell strategy: {reason}")
        self.reason = reason


# ---- the values of a step: register tiles -----------------------------------------------

@dataclass(frozen=True)
class Tile:
    """A value in registers: [BB or 1, BLOCK_dim or 1]. A stacked value [G, d] is a
    Python list of G tiles. `const` tiles are numbers or consts: no adjoint."""
    var: str
    rows: bool                 # spans the batch rows of the program
    dim: str | None = None     # column dim key, None for one column
    const: bool = False
    num: float | None = None   # the value, when it is a number known now


@dataclass(frozen=True)
class Weight:
    """One [I, O] tile of a param matrix, the right operand of a tl.dot:
    W = M (natural) or M^T (transposed), M the param's matrix (slice)."""
    param: str
    slice: int | None
    transposed: bool

    @property
    def var(self) -> str:
        return f"_w_{self.param}_{'all' if self.slice is None else self.slice}_{'t' if self.transposed else 'n'}"

    @property
    def acc(self) -> str:
        return "_d" + self.var[1:]

    def flipped(self) -> "Weight":
        return Weight(self.param, self.slice, not self.transposed)


@dataclass(frozen=True)
class _ParamMatrix:
    """A param matrix (or its slice, or transpose) on one side of `@`."""
    name: str
    slice: int | None
    T: bool
    pos: ir.Pos


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# Triton emission and VJP of each elementwise unary primitive: x input, y output, g adjoint.
_UNARY = {
    "exp": "tl.exp({x})", "log": "tl.log({x})", "sigmoid": "tl.sigmoid({x})",
    "tanh": "{n}_tanh({x})", "logsigmoid": "{n}_logsigmoid({x})", "softplus": "{n}_softplus({x})",
    "relu": "tl.maximum({x}, 0.0)", "sqrt": "tl.sqrt({x})", "abs": "tl.abs({x})",
    "step": "tl.where({x} > 0, 1.0, 0.0)", "neg": "-{x}",
}
_UNARY_VJP = {
    "exp": "{g} * {y}", "log": "{g} / {x}", "sigmoid": "{g} * {y} * (1.0 - {y})",
    "tanh": "{g} * (1.0 - {y} * {y})", "logsigmoid": "{g} * tl.sigmoid(-{x})",
    "softplus": "{g} * tl.sigmoid({x})", "relu": "tl.where({x} > 0, {g}, 0.0)",
    "sqrt": "{g} * 0.5 / {y}", "abs": "tl.where({x} > 0, {g}, tl.where({x} < 0, -{g}, 0.0))",
    "step": None, "neg": "-{g}",
}
_UNARY_PY = {
    "exp": math.exp, "log": math.log, "sigmoid": lambda v: 1 / (1 + math.exp(-v)), "tanh": math.tanh,
    "logsigmoid": lambda v: -math.log1p(math.exp(-v)), "softplus": lambda v: math.log1p(math.exp(v)),
    "relu": lambda v: max(v, 0.0), "sqrt": math.sqrt, "abs": abs, "step": lambda v: float(v > 0),
    "neg": lambda v: -v,
}
_BIN_PY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b}


class _Layout:
    """Where every declared tensor lives and how its tiles are indexed."""

    def __init__(self, rec: ir.Recurrence):
        self.rec = rec
        fixed = rec.fixed_dims
        self.dims = {}         # key -> (size expr, block expr); free dims are kernel constexprs
        self.free = []         # free dim names, in declaration order

        def key(d, decl) -> str:
            if isinstance(d, int):   # a number: its key cannot clash with a dim name
                self.dims.setdefault(str(d), (str(d), str(max(MIN_DOT, _pow2(d)))))
                return str(d)
            if d in fixed:
                self.dims.setdefault(d, (str(fixed[d]), str(max(MIN_DOT, _pow2(fixed[d])))))
            elif d not in self.dims:
                self.dims[d] = (f"DIM_{d}", f"BLOCK_{d}")
                self.free.append(d)
            return d

        def stacked(d, decl) -> int:
            size = d if isinstance(d, int) else fixed.get(d)
            if size is None:
                raise NotACell(rec, f"'{decl.name}' stacks over the free dim '{d}'; the cell strategy unrolls "
                                    f"stacked slices and needs the size fixed in the spec (`dims {d} = 4`)", decl.pos)
            return int(size)

        # shape layout per decl: (G or None, column dim key or None) for vectors; matrices separately
        self.vec = {}          # name -> (G | None, dim key | None)
        self.mat = {}          # name -> (G | None, P0 key, P1 key)
        for d in rec.inputs + rec.outputs:
            self.vec[d.name] = self._vector(d, key, stacked, "an input" if d in rec.inputs else "an output")
        for d in rec.states:
            if len(d.shape) > 1:
                raise NotACell(rec, f"state '{d.name}' is a matrix {list(d.shape)}; cells carry vector "
                                    f"states (matrix states go to the recurrent or chunked strategy)", d.pos)
            self.vec[d.name] = (None, key(d.shape[0], d) if d.shape else None)
        for d in rec.params:
            if len(d.shape) == 3:
                self.mat[d.name] = (stacked(d.shape[0], d), key(d.shape[1], d), key(d.shape[2], d))
            elif len(d.shape) == 2 and (self._used_as_matrix(d.name) or not self._fixed(d.shape[0])):
                self.mat[d.name] = (None, key(d.shape[0], d), key(d.shape[1], d))
            else:
                self.vec[d.name] = self._vector(d, key, stacked, "a param")

    def _fixed(self, d) -> bool:
        return isinstance(d, int) or d in self.rec.fixed_dims

    def _used_as_matrix(self, name: str) -> bool:
        for stmt in ir.unrolled(self.rec.body):
            expr = getattr(stmt, "expr", None)
            if expr is None:
                continue
            for e in ir.walk(expr):
                if isinstance(e, ir.Binary) and e.op == "@":
                    for side in (e.lhs, e.rhs):
                        while isinstance(side, (ir.Unary, ir.Index)):
                            side = side.operand if isinstance(side, ir.Unary) else side.base
                        if isinstance(side, ir.Ref) and side.name == name:
                            return True
        return False

    def _vector(self, d, key, stacked, what):
        if len(d.shape) == 0:
            return (None, None)
        if len(d.shape) == 1:
            return (None, key(d.shape[0], d))
        if len(d.shape) == 2:
            return (stacked(d.shape[0], d), key(d.shape[1], d))
        raise NotACell(self.rec, f"{what} '{d.name}' has shape {list(d.shape)}; cells take scalars, vectors "
                                 f"and stacks of vectors [n, d]", d.pos)

    def size(self, name: str) -> str:
        """Elements of one (step, head) of a tensor, as a kernel expression."""
        if name in self.mat:
            g, p0, p1 = self.mat[name]
            parts = ([str(g)] if g is not None else []) + [self.dims[p0][0], self.dims[p1][0]]
        else:
            g, dim = self.vec[name]
            parts = ([str(g)] if g is not None else []) + ([self.dims[dim][0]] if dim else [])
        return " * ".join(parts) if parts else "1"

    def slices(self, name: str) -> list:
        g, _ = self.vec[name]
        return [None] if g is None else list(range(g))

    def block(self, dim: str | None) -> str:
        return self.dims[dim][1] if dim else "1"


class _Step:
    """One step of the body as straight-line tile code, plus its tape for the adjoint."""

    def __init__(self, rec: ir.Recurrence, layout: _Layout):
        self.rec, self.layout = rec, layout
        self.lines, self.tape = [], []
        self.dots = []         # (index into lines, out tile) of every param-matrix product
        self.weights = {}      # Weight -> None, in first-use order
        self.count = 0
        self.memo = {}
        env = {}
        for d in rec.inputs:
            env[d.name] = self._leaves(d.name, "_in", rows=True)
        for d in rec.states:
            env[d.name] = Tile(f"_s_{d.name}", True, layout.vec[d.name][1])
        for d in rec.params:
            if d.name not in layout.mat:
                env[d.name] = self._leaves(d.name, "_p", rows=False)
        self.leaves = dict(env)
        self.emitted = {}
        for stmt in ir.unrolled(rec.body):
            if isinstance(stmt, ir.Let):
                if stmt.name in env:
                    self.memo.clear()
                env[stmt.name] = self.value(stmt.expr, env)
            elif isinstance(stmt, ir.Assign):
                env[stmt.target] = self.value(stmt.expr, env)
                self.memo.clear()
            elif isinstance(stmt, ir.Emit):
                self.emitted[stmt.output] = self.value(stmt.expr, env)
            else:
                raise NotACell(rec, "a monoid combine is a scan, not a cell step", stmt.pos)
        self.finals = {d.name: env[d.name] for d in rec.states}

    def _leaves(self, name, prefix, rows):
        g, dim = self.layout.vec[name]
        if g is None:
            return Tile(f"{prefix}_{name}", rows, dim)
        return [Tile(f"{prefix}_{name}_{j}", rows, dim) for j in range(g)]

    # ---- emission helpers ----
    def fresh(self, prefix: str = "_v") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def emit(self, code: str, rows: bool, dim) -> Tile:
        var = self.fresh()
        self.lines.append(f"{var} = {code}")
        return Tile(var, rows, dim)

    def const(self, value: float) -> Tile:
        return Tile(repr(float(value)), False, None, True, float(value))

    # ---- expressions ----
    def value(self, expr: ir.Expr, env: dict):
        try:
            return self.memo[expr]
        except (KeyError, TypeError):
            pass
        out = self._value(expr, env)
        try:
            self.memo[expr] = out
        except TypeError:
            pass
        return out

    def _value(self, e: ir.Expr, env: dict):
        rec = self.rec
        if isinstance(e, ir.Num):
            return self.const(e.value)
        if isinstance(e, ir.Ref):
            if e.kind == "const":
                return Tile(f"c_{e.name}", False, None, True)
            if e.kind == "dim":
                size = self.layout.dims.get(e.name, (f"DIM_{e.name}",))[0]
                if size.isdigit():
                    return self.const(float(size))
                return Tile(f"({size} * 1.0)", False, None, True)
            if e.kind == "param" and e.name in self.layout.mat:
                return _ParamMatrix(e.name, None, False, e.pos)
            if e.name in env:
                return env[e.name]
            raise NotACell(rec, f"'{e.name}' ({e.kind}) cannot be read in a cell step", e.pos)
        if isinstance(e, ir.Unary):
            x = self.value(e.operand, env)
            if e.op == "T":
                if isinstance(x, _ParamMatrix):
                    return _ParamMatrix(x.name, x.slice, not x.T, x.pos)
                raise NotACell(rec, "only a param matrix can be transposed in a cell step", e.pos)
            return self._map(lambda t: self.unary("neg", t), x, e)
        if isinstance(e, ir.Index):
            base = self.value(e.base, env)
            if not isinstance(e.index, ir.Num):
                raise NotACell(rec, "an index must be a number or a loop variable", e.pos)
            j = int(e.index.value)
            if isinstance(base, list):
                return base[j]
            if isinstance(base, _ParamMatrix) and base.slice is None and self.layout.mat[base.name][0] is not None:
                return _ParamMatrix(base.name, j, base.T, base.pos)
            raise NotACell(rec, "only stacked values [n, d] and stacked param matrices can be indexed", e.pos)
        if isinstance(e, ir.Call):
            return self._call(e, env)
        if isinstance(e, ir.Binary):
            if e.op == "@":
                return self.matmul(self.value(e.lhs, env), self.value(e.rhs, env), e)
            a, b = self.value(e.lhs, env), self.value(e.rhs, env)
            return self._zip(lambda x, y: self.binary(e.op, x, y), a, b, e)
        raise NotACell(rec, f"{type(e).__name__} expressions are not part of a cell step",
                       getattr(e, "pos", None))

    def _check_value(self, v, e):
        if isinstance(v, _ParamMatrix):
            raise NotACell(self.rec, f"the param matrix '{v.name}' is used elementwise; in a cell step a "
                                     f"param matrix may only multiply a vector with `@`", v.pos)
        return v

    def _map(self, fn, x, e):
        x = self._check_value(x, e)
        return [fn(t) for t in x] if isinstance(x, list) else fn(x)

    def _zip(self, fn, a, b, e):
        a, b = self._check_value(a, e), self._check_value(b, e)
        if isinstance(a, list) and isinstance(b, list):
            return [fn(x, y) for x, y in zip(a, b)]
        if isinstance(a, list):
            return [fn(x, b) for x in a]
        if isinstance(b, list):
            return [fn(a, y) for y in b]
        return fn(a, b)

    def _call(self, e: ir.Call, env: dict):
        args = [self.value(a, env) for a in e.args]
        fn = e.fn
        if fn in _UNARY and len(args) == 1:
            return self._map(lambda t: self.unary(fn, t), args[0], e)
        if fn == "silu":
            return self._map(lambda t: self.binary("*", t, self.unary("sigmoid", t)), args[0], e)
        if fn in ("max", "min"):
            return self._zip(lambda x, y: self.extremum(fn, x, y), args[0], args[1], e)
        if fn == "sum":
            x = self._check_value(args[0], e)
            if isinstance(x, list):
                parts = [self.row_sum(t) for t in x]
                out = parts[0]
                for p in parts[1:]:
                    out = self.binary("+", out, p)
                return out
            return self.row_sum(x)
        if fn == "dot":
            return self._zip(lambda x, y: self.row_sum(self.binary("*", x, y)), args[0], args[1], e)
        if fn == "l2norm":
            def norm(t):
                return self.binary("/", t, self.unary("sqrt", self.row_sum(self.binary("*", t, t))))
            return self._map(norm, args[0], e)
        if fn == "stack":
            return [self._check_value(a, e) for a in args]
        raise NotACell(self.rec, f"'{fn}' makes a matrix or is not elementwise; a cell step is elementwise "
                                 f"apart from param-matrix products", e.pos)

    # ---- tile ops (each one tape entry) ----
    def unary(self, fn: str, x: Tile) -> Tile:
        if x.num is not None:
            return self.const(_UNARY_PY[fn](x.num))
        arg = x.var
        if x.const:  # a runtime scalar (const or dim): make it a tensor first
            arg = f"(tl.zeros([1, 1], tl.float32) + {x.var})"
            return Tile("(" + _UNARY[fn].format(x=arg, n=self.rec.name) + ")", False, None, True)
        out = self.emit(_UNARY[fn].format(x=arg, n=self.rec.name), x.rows, x.dim)
        self.tape.append(("unary", fn, out, x))
        return out

    def binary(self, op: str, a: Tile, b: Tile) -> Tile:
        if op == "**":
            return self.power(a, b)
        if a.num is not None and b.num is not None:
            return self.const(_BIN_PY[op](a.num, b.num))
        if a.const and b.const:
            return Tile(f"({a.var} {op} {b.var})", False, None, True)
        out = self.emit(f"{a.var} {op} {b.var}", a.rows or b.rows, a.dim or b.dim)
        self.tape.append(("binary", op, out, a, b))
        return out

    def power(self, a: Tile, b: Tile) -> Tile:
        p = b.num
        if p is not None and p == int(p) and abs(p) <= 8:
            k = int(abs(p))
            if k == 0:
                return self.const(1.0)
            out = a
            for _ in range(k - 1):
                out = self.binary("*", out, a)
            return self.binary("/", self.const(1.0), out) if p < 0 else out
        if p == 0.5:
            return self.unary("sqrt", a)
        return self.unary("exp", self.binary("*", b, self.unary("log", a)))

    def extremum(self, fn: str, a: Tile, b: Tile) -> Tile:
        if a.num is not None and b.num is not None:
            return self.const(max(a.num, b.num) if fn == "max" else min(a.num, b.num))
        op = "tl.maximum" if fn == "max" else "tl.minimum"
        if a.const and b.const:
            return Tile(f"{op}(tl.zeros([1, 1], tl.float32) + {a.var}, {b.var})", False, None, True)
        x, y = (a, b) if not a.const else (b, a)
        out = self.emit(f"{op}({x.var}, {y.var})", a.rows or b.rows, a.dim or b.dim)
        self.tape.append(("extremum", fn, out, a, b))
        return out

    def row_sum(self, x: Tile) -> Tile:
        if x.dim is None:
            return x
        if x.const:
            raise NotACell(self.rec, "sum over a constant")
        out = self.emit(f"tl.sum(tl.where(_cm_{x.dim}, {x.var}, 0.0), axis=1)[:, None]", x.rows, None)
        self.tape.append(("sum", out, x))
        return out

    def matmul(self, lhs, rhs, e: ir.Binary):
        if isinstance(lhs, _ParamMatrix) and isinstance(rhs, Tile) and not rhs.const:
            m, v, transposed = lhs, rhs, not lhs.T       # A @ v = v @ A^T
        elif isinstance(rhs, _ParamMatrix) and isinstance(lhs, Tile) and not lhs.const:
            m, v, transposed = rhs, lhs, rhs.T           # v @ A
        else:
            raise NotACell(self.rec, "a cell step multiplies only a param matrix and a vector with `@` "
                                     "(like `R @ h` or `R[j] @ h`)", e.pos)
        g, _, _ = self.layout.mat[m.name]
        if m.slice is None and g is not None:
            return [self.dot(v, Weight(m.name, j, transposed)) for j in range(g)]
        return self.dot(v, Weight(m.name, m.slice, transposed))

    def weight_dims(self, w: Weight) -> tuple:
        """(in dim, out dim) of a weight tile."""
        _, p0, p1 = self.layout.mat[w.param]
        return (p1, p0) if w.transposed else (p0, p1)

    def dot(self, v: Tile, w: Weight) -> Tile:
        self.weights[w] = None
        i, o = self.weight_dims(w)
        x = v.var if v.rows else f"(tl.zeros([BB, {self.layout.block(i)}], tl.float32) + {v.var})"
        out = self.emit(f"tl.dot(tl.where(_cm_{i}, {x}, 0.0).to({w.var}.dtype), {w.var}, "
                        f"input_precision=PRECISION)", True, o)
        self.dots.append((len(self.lines) - 1, out))
        self.tape.append(("dot", out, v, w, len(self.dots) - 1))
        return out


class _Adjoint:
    """Reverse-mode sweep over a step's tape: lines that compute the adjoint of every leaf."""

    def __init__(self, step: _Step):
        self.step, self.layout = step, step.layout
        self.lines = []
        self.adj = {}          # tile var -> adjoint var
        self.operands = {}     # tile var of a product's vector operand -> (index, dim)
        self.products = []     # (product index, Weight, operand index)
        self.shape = {}        # adjoint var -> (rows, dim)
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        return f"_g{self.count}"

    def full(self, rows: bool, dim) -> str:
        return f"[{'BB' if rows else 1}, {self.layout.block(dim)}]"

    def fit(self, code: str, shape: tuple, target: Tile) -> str:
        """`code` (an adjoint of `shape`) summed or broadcast to the tile shape of `target`."""
        rows, dim = shape
        if rows and not target.rows:
            code = f"tl.sum(tl.where(_act, {code}, 0.0), axis=0)[None, :]"
            rows = False
        if dim is not None and target.dim is None:
            code = f"tl.sum(tl.where(_cm_{dim}, {code}, 0.0), axis=1)[:, None]"
            dim = None
        if (target.rows and not rows) or (target.dim is not None and dim is None):
            code = f"tl.broadcast_to({code}, {self.full(target.rows, target.dim)})"
        return code

    def add(self, target: Tile, code: str, shape: tuple) -> None:
        if target.const:
            return
        code = self.fit(code, shape, target)
        var = self.fresh()
        old = self.adj.get(target.var)
        self.lines.append(f"{var} = {old} + {code}" if old else f"{var} = {code}")
        self.adj[target.var] = var

    def seed(self, tile: Tile, var: str) -> None:
        self.add(tile, var, (tile.rows, tile.dim))

    def sweep(self) -> None:
        for entry in reversed(self.step.tape):
            kind, out = entry[0], entry[2] if entry[0] in ("unary", "binary", "extremum") else entry[1]
            g = self.adj.get(out.var)
            if g is None:
                continue
            shape = (out.rows, out.dim)
            if kind == "unary":
                _, fn, _, x = entry
                rule = _UNARY_VJP[fn]
                if rule is not None:
                    self.add(x, "(" + rule.format(g=g, x=x.var, y=out.var) + ")", shape)
            elif kind == "binary":
                _, op, _, a, b = entry
                if op == "+":
                    self.add(a, g, shape)
                    self.add(b, g, shape)
                elif op == "-":
                    self.add(a, g, shape)
                    self.add(b, f"(-{g})", shape)
                elif op == "*":
                    self.add(a, f"({g} * {b.var})", shape)
                    self.add(b, f"({g} * {a.var})", shape)
                elif op == "/":
                    self.add(a, f"({g} / {b.var})", shape)
                    self.add(b, f"(-{g} * {out.var} / {b.var})", shape)
            elif kind == "extremum":
                _, fn, _, a, b = entry
                gt = ">" if fn == "max" else "<"
                tie = f"tl.where({a.var} == {b.var}, 0.5 * {g}, 0.0)"
                self.add(a, f"tl.where({a.var} {gt} {b.var}, {g}, {tie})", shape)
                self.add(b, f"tl.where({b.var} {gt} {a.var}, {g}, {tie})", shape)
            elif kind == "sum":
                _, _, x = entry
                self.add(x, g, shape)
            elif kind == "dot":
                _, _, v, w, k = entry
                i, o = self.step.weight_dims(w)
                gm = self.fresh()
                self.lines.append(f"{gm} = tl.where(_cm_{o}, {g}, 0.0)")
                wt = w.flipped().var
                self.add(v, f"tl.dot({gm}.to({wt}.dtype), {wt}, input_precision=PRECISION)", (True, i))
                x = v.var if v.rows else f"(tl.zeros([BB, {self.layout.block(i)}], tl.float32) + {v.var})"
                # dW += v^T g: in registers, or (DW_IN_REGS off) g and v stored per step for one GEMM after
                self.lines += [
                    "if DW_IN_REGS:",
                    f"    {w.acc} += tl.dot(tl.trans(tl.where(_act & _cm_{i}, {x}, 0.0)).to({wt}.dtype), "
                    f"tl.where(_act, {gm}, 0.0).to({wt}.dtype), input_precision=PRECISION)",
                    "else:",
                    "    " + _row_store(self.layout, f"dz_{k}", o, "_tok", "_act", gm)]
                if v.var not in self.operands:
                    self.operands[v.var] = (len(self.operands), i)
                    self.lines += ["if not DW_IN_REGS:",
                                   "    " + _row_store(self.layout, f"dv_{self.operands[v.var][0]}", i, "_tok",
                                                       "_act", x)]
                self.products.append((k, w, self.operands[v.var][0]))

    def of(self, tile: Tile, rows=None, dim=None) -> str:
        """The adjoint of a leaf tile, full [BB or 1, BLOCK] shape, or zeros."""
        var = self.adj.get(tile.var)
        if var is None:
            return f"tl.zeros({self.full(tile.rows, tile.dim)}, tl.float32)"
        return var


# ---- kernel text ------------------------------------------------------------------------

def _row_offsets(layout: _Layout, dim, tok: str) -> str:
    """Offsets of a [BB, BLOCK_dim] tile of a [*, H, dim] tensor at row index `tok`."""
    size = layout.dims[dim][0] if dim else "1"
    return f"((({tok}) * H + _pid_h) * ({size}))[:, None]{_col(layout, dim)}"


def _row_load(layout: _Layout, ptr: str, dim, tok: str, mask: str, var: str) -> str:
    return f"{var} = tl.load({ptr} + {_row_offsets(layout, dim, tok)}, mask={_mask(dim, mask)}, other=0.0)"


def _row_store(layout: _Layout, ptr: str, dim, tok: str, mask: str, value: str) -> str:
    return f"tl.store({ptr} + {_row_offsets(layout, dim, tok)}, {value}, mask={_mask(dim, mask)})"


def _col(layout: _Layout, dim) -> str:
    return f" + _col_{dim}[None, :]" if dim else ""


def _mask(dim, rows: str = "_act") -> str:
    return f"{rows} & _cm_{dim}" if dim else rows


class _Kernel:
    """The pieces of the two kernels for the template, computed from the step."""

    def __init__(self, rec: ir.Recurrence):
        self.rec = rec
        self.layout = layout = _Layout(rec)
        if rec.topology != "sequence":
            raise NotACell(rec, f"topology '{rec.topology}' is not a sequence")
        if not rec.inputs:
            raise NotACell(rec, "a cell needs a per-step input")
        self.step = step = _Step(rec, layout)
        self.adjoint = _Adjoint(step)
        self.weights = list(step.weights)

    # addresses
    def row_base(self, name: str, tok: str) -> str:
        return f"({tok} * H + _pid_h) * ({self.layout.size(name)})"

    def vec_offsets(self, name: str, j, base: str) -> str:
        g, dim = self.layout.vec[name]
        off = f"{base}[:, None]"
        if j:
            off += f" + {j} * {self.layout.dims[dim][0] if dim else 1}"
        return off + _col(self.layout, dim)

    def load_rows(self, ptr: str, name: str, tok: str, act: str, prefix: str):
        """Lines loading every slice of a per-step tensor at token `tok` for rows `act`."""
        lines = [f"_base = {self.row_base(name, tok)}"]
        g, dim = self.layout.vec[name]
        for j in self.layout.slices(name):
            var = prefix if j is None else f"{prefix}_{j}"
            lines.append(f"{var} = tl.load({ptr} + {self.vec_offsets(name, j, '_base')}, "
                         f"mask={_mask(dim, act)}, other=0.0).to(tl.float32)")
        return lines

    def store_rows(self, ptr: str, name: str, tok: str, act: str, values: list):
        lines = [f"_base = {self.row_base(name, tok)}"]
        g, dim = self.layout.vec[name]
        for j, value in zip(self.layout.slices(name), values):
            lines.append(f"tl.store({ptr} + {self.vec_offsets(name, j, '_base')}, "
                         f"{value}.to({ptr}.dtype.element_ty), mask={_mask(dim, act)})")
        return lines

    def full(self, dim, value: str) -> str:
        """`value` broadcast to a full [BB, BLOCK_dim] tile."""
        return f"(tl.zeros([BB, {self.layout.block(dim)}], tl.float32) + {value})"

    def weight_address(self, w: Weight, head: str) -> tuple:
        """(offsets, mask) of the [BLOCK_I, BLOCK_O] tile of weight `w` in a [*, H, *shape] param
        tensor, `head` the index of the (part, head) row."""
        g, p0, p1 = self.layout.mat[w.param]
        i, o = self.step.weight_dims(w)
        s1 = self.layout.dims[p1][0]
        rows, cols = f"_col_{i}[:, None]", f"_col_{o}[None, :]"
        off = f"{cols} * {s1} + {rows}" if w.transposed else f"{rows} * {s1} + {cols}"
        base = f"({head}) * ({self.layout.size(w.param)})"
        if w.slice:
            base += f" + {w.slice} * {self.layout.dims[p0][0]} * {s1}"
        return f"{base} + {off}", f"(_col_{i} < {self.layout.dims[i][0]})[:, None] & _cm_{o}"

    def weight_load(self, w: Weight) -> str:
        off, mask = self.weight_address(w, "_pid_h")
        return f"{w.var} = tl.load(par_{w.param} + {off}, mask={mask}, other=0.0)"

    def weight_store(self, w: Weight, part: str) -> str:
        off, mask = self.weight_address(w, f"({part}) * H + _pid_h")
        return f"tl.store(dpar_{w.param} + {off}, {w.acc}, mask={mask})"

    def param_vec_load(self, name: str, prefix: str):
        g, dim = self.layout.vec[name]
        lines = []
        for j in self.layout.slices(name):
            var = prefix if j is None else f"{prefix}_{j}"
            off = f"_pid_h * ({self.layout.size(name)})"
            if j:
                off += f" + {j} * {self.layout.dims[dim][0] if dim else 1}"
            col = f" + _col_{dim}[None, :]" if dim else " + tl.zeros([1, 1], tl.int32)"
            mask = f", mask=_cm_{dim}, other=0.0" if dim else ""
            lines.append(f"{var} = tl.load(par_{name} + {off}{col}{mask}).to(tl.float32)")
        return lines

    def row_tile_load(self, ptr: str, dim, tok: str, mask: str, var: str) -> str:
        return _row_load(self.layout, ptr, dim, tok, mask, var)

    def row_tile_store(self, ptr: str, dim, tok: str, mask: str, value: str) -> str:
        return _row_store(self.layout, ptr, dim, tok, mask, value)

    def materialize(self, t: Tile) -> str:
        if t.rows and t.dim is not None and not t.const:
            return t.var
        return self.full(t.dim, t.var) if t.dim is not None else f"(tl.zeros([BB, 1], tl.float32) + {t.var})"

    # ---- sections handed to the template ----
    def names(self) -> dict:
        rec, layout = self.rec, self.layout
        return dict(inputs=[d.name for d in rec.inputs], states=[d.name for d in rec.states],
                    outputs=[d.name for d in rec.outputs],
                    pvecs=[d.name for d in rec.params if d.name not in layout.mat],
                    mats=[d.name for d in rec.params if d.name in layout.mat])

    def forward_sections(self) -> dict:
        layout, step, n = self.layout, self.step, self.names()
        ins, states = n["inputs"], n["states"]
        dim = lambda s: layout.vec[s][1]
        fwd = {}
        fwd["params"] = sum((self.param_vec_load(p, f"_p_{p}") for p in n["pvecs"]), [])
        fwd["weights"] = [self.weight_load(w) for w in self.weights]
        fwd["init"] = [self.row_tile_load(f"init_{s}", dim(s), "_seq", "_row_ok", f"_s_{s}") for s in states]
        fwd["prefetch0"] = sum((self.load_rows(f"in_{x}", x, "_tok", "_act", f"_in_{x}") for x in ins), [])
        fwd["prefetch"] = sum((self.load_rows(f"in_{x}", x, "_tok_n", "_act_n", f"_nx_{x}") for x in ins), [])
        fwd["shift"] = [f"{t.var} = {t.var.replace('_in_', '_nx_', 1)}"
                        for x in ins for t in _tiles(step.leaves[x])]
        dot_at = {i: (k, t) for k, (i, t) in enumerate(step.dots)}
        fwd["step"] = []
        for i, line in enumerate(step.lines):
            fwd["step"].append(line)
            if i in dot_at:   # the product, kept for the backward
                k, t = dot_at[i]
                fwd["step"] += ["if SAVE_DOTS:", "    " + self.row_tile_store(f"zs_{k}", t.dim, "_tok", "_act", t.var)]
        fwd["stores"] = sum((self.store_rows(f"out_{o}", o, "_tok", "_act",
                                             [self.materialize(t) for t in _tiles(step.emitted[o])])
                             for o in n["outputs"]), [])
        fwd["save"] = [self.row_tile_store(f"seq_{s}", dim(s), "_tok", "_act", self.materialize(step.finals[s]))
                       for s in states]
        fwd["advance"] = [f"_n_{s} = tl.where({_mask(dim(s))}, {self.materialize(step.finals[s])}, _s_{s})"
                          for s in states] + [f"_s_{s} = _n_{s}" for s in states]
        fwd["finals"] = [self.row_tile_store(f"fin_{s}", dim(s), "_seq", "_row_ok", f"_s_{s}") for s in states]
        return fwd

    def backward_sections(self, fwd: dict) -> dict:
        layout, step, adj, n = self.layout, self.step, self.adjoint, self.names()
        ins, states, outs, pvecs = n["inputs"], n["states"], n["outputs"], n["pvecs"]
        dim = lambda s: layout.vec[s][1]
        for s in states:
            adj.seed(step.finals[s], f"_ds_{s}")
        for o in outs:
            for j, t in zip(layout.slices(o), _tiles(step.emitted[o])):
                adj.seed(t, f"_dy_{o}" if j is None else f"_dy_{o}_{j}")
        adj.sweep()
        guarded = lambda flag, lines: [f"if {flag}:"] + ["    " + line for line in lines] if lines else []
        bwd = {}
        # W^T for the adjoint always; W itself only to recompute the products
        always = list(dict.fromkeys(w.flipped() for w in self.weights))
        recompute = [w for w in self.weights if w not in always]
        bwd["weights"] = [self.weight_load(w) for w in always] + \
            guarded("not SAVE_DOTS", [self.weight_load(w) for w in recompute])
        blocks = lambda w: ", ".join(layout.block(d) for d in step.weight_dims(w))
        bwd["accs"] = guarded("DW_IN_REGS", [f"{w.acc} = tl.zeros([{blocks(w)}], tl.float32)" for w in self.weights])
        bwd["params"] = fwd["params"]
        bwd["pgrads0"] = [f"_dp_{t.var[3:]} = tl.zeros([1, {layout.block(t.dim)}], tl.float32)"
                          for p in pvecs for t in _tiles(step.leaves[p])]
        bwd["init"] = [self.row_tile_load(f"init_{s}", dim(s), "_seq", "_row_ok", f"_i_{s}") for s in states]
        bwd["dfinal"] = [self.row_tile_load(f"dfin_{s}", dim(s), "_seq", "_row_ok", f"_ds_{s}") for s in states]

        def prefetch(tok, act, prefix_in, prefix_s, prefix_dy, prefix_z):
            """Loads of one step: inputs, the states before it, its products, its output adjoints."""
            lines = sum((self.load_rows(f"in_{x}", x, tok, act, f"{prefix_in}_{x}") for x in ins), [])
            lines.append(f"_later = ({tok} > _start)[:, None]")   # not the sequence's first step
            for s in states:
                lines.append(self.row_tile_load(f"seq_{s}", dim(s), f"{tok} - 1", f"{act} & _later", "_prev"))
                lines.append(f"{prefix_s}_{s} = tl.where(_later, _prev, _i_{s})")
            lines += guarded("SAVE_DOTS", [self.row_tile_load(f"zs_{k}", t.dim, tok, act, f"{prefix_z}{k}")
                                           for k, (_, t) in enumerate(step.dots)])
            dys = [(o, self.load_rows(f"dout_{o}", o, tok, act, f"{prefix_dy}_{o}"),
                    [(f"{prefix_dy}_{o}" if j is None else f"{prefix_dy}_{o}_{j}", dim(o)) for j in layout.slices(o)])
                   for o in outs]
            return lines, dys

        bwd["prefetch0"], bwd["dy0"] = prefetch("_tok", "_act", "_in", "_s", "_dy", "_z")
        bwd["prefetch"], bwd["dy"] = prefetch("_tok_n", "_act_n", "_nx", "_ns", "_ndy", "_nz")
        bwd["shift"] = list(fwd["shift"]) + [f"_s_{s} = _ns_{s}" for s in states] + \
            [f"_dy_{x} = _ndy_{x}" for o in outs for x in ([o] if layout.vec[o][0] is None else
                                                             [f"{o}_{j}" for j in layout.slices(o)])] + \
            guarded("SAVE_DOTS", [f"_z{k} = _nz{k}" for k in range(len(step.dots))])
        dot_at = {i: k for k, (i, _) in enumerate(step.dots)}
        bwd["step"] = []
        for i, line in enumerate(step.lines):
            if i in dot_at:   # the stored product, or recompute it
                var = line.split(" = ", 1)[0]
                bwd["step"] += ["if SAVE_DOTS:", f"    {var} = _z{dot_at[i]}", "else:", "    " + line]
            else:
                bwd["step"].append(line)
        bwd["adjoint"] = list(adj.lines)
        bwd["dinputs"] = sum((self.store_rows(f"din_{x}", x, "_tok", "_act",
                                              [adj.of(t) for t in _tiles(step.leaves[x])]) for x in ins), [])
        bwd["pgrads"] = [f"_dp_{t.var[3:]} += {adj.adj[t.var]}"
                         for p in pvecs for t in _tiles(step.leaves[p]) if t.var in adj.adj]
        bwd["carry"] = [f"_nds_{s} = tl.where({_mask(dim(s))}, "
                        f"{self.materialize(Tile(adj.of(step.leaves[s]), True, dim(s)))}, _ds_{s})"
                        for s in states] + [f"_ds_{s} = _nds_{s}" for s in states]
        bwd["dinit"] = [self.row_tile_store(f"dinit_{s}", dim(s), "_seq", "_row_ok", f"_ds_{s}") for s in states]
        bwd["dweights"] = guarded("DW_IN_REGS", [self.weight_store(w, f"_pid_b * 2 + {int(w.transposed)}")
                                                 for w in self.weights])
        bwd["dparams"] = []
        for p in pvecs:
            g, d = layout.vec[p]
            for j, t in zip(layout.slices(p), _tiles(step.leaves[p])):
                off = f"(_pid_b * H + _pid_h) * ({layout.size(p)})"
                if j:
                    off += f" + {j} * {layout.dims[d][0] if d else 1}"
                col = f" + _col_{d}[None, :]" if d else " + tl.zeros([1, 1], tl.int32)"
                mask = f", mask=_cm_{d}" if d else ""
                bwd["dparams"].append(f"tl.store(dpar_{p} + {off}{col}, _dp_{t.var[3:]}{mask})")
        return bwd

    def signatures(self) -> dict:
        """The kernels' argument lists, one line per group."""
        rec, layout, n = self.rec, self.layout, self.names()
        ins, states, outs, params = n["inputs"], n["states"], n["outputs"], n["mats"] + n["pvecs"]
        groups = lambda *gs: [", ".join(g) for g in gs if g]
        zs = [f"zs_{k}" for k in range(len(self.step.dots))]
        constexprs = sum(([f"DIM_{d}: tl.constexpr", f"BLOCK_{d}: tl.constexpr"] for d in layout.free), []) + \
            ["BB: tl.constexpr", "PRECISION: tl.constexpr", "W_RESIDENT: tl.constexpr", "SAVE_DOTS: tl.constexpr"]
        return dict(
            fwd_args=groups([f"in_{x}" for x in ins] + [f"par_{p}" for p in params],
                            [f"init_{s}" for s in states] + [f"out_{o}" for o in outs],
                            [f"seq_{s}" for s in states] + zs + [f"fin_{s}" for s in states]),
            bwd_args=groups([f"in_{x}" for x in ins] + [f"par_{p}" for p in params],
                            [f"init_{s}" for s in states] + [f"seq_{s}" for s in states] + zs,
                            [f"dout_{o}" for o in outs] + [f"dfin_{s}" for s in states],
                            [f"dz_{k}" for k in range(len(self.step.dots))] +
                            [f"dv_{j}" for j in range(len(self.adjoint.operands))],
                            [f"din_{x}" for x in ins] + [f"dpar_{p}" for p in params],
                            [f"dinit_{s}" for s in states]),
            scalars=", ".join(["starts", "lens", "N", "H", "T_max"] + [f"c_{c.name}" for c in rec.consts]),
            constexprs=", ".join(constexprs),
            fwd_flags="SAVE_STATES: tl.constexpr",
            flags=", ".join(["DW_IN_REGS: tl.constexpr"] + [f"HAS_DOUT_{o}: tl.constexpr" for o in outs]))

    def sections(self) -> dict:
        rec, layout, step, adj = self.rec, self.layout, self.step, self.adjoint
        fwd = self.forward_sections()
        bwd = self.backward_sections(fwd)
        return dict(
            name=rec.name, **self.names(), **self.signatures(), fwd=fwd, bwd=bwd,
            consts=[c.name for c in rec.consts], free=layout.free,
            dims=[dict(key=k, size=s, block=b) for k, (s, b) in layout.dims.items()],
            dims_block={None: "1", **{k: b for k, (s, b) in layout.dims.items()}},
            fixed_blocks={k: int(b) for k, (s, b) in layout.dims.items() if k not in layout.free},
            fixed_sizes={k: int(s) for k, (s, b) in layout.dims.items() if k not in layout.free},
            weight_dims=[step.weight_dims(w) for w in self.weights],
            dot_dims=[t.dim for _, t in step.dots],
            operand_dims=[d for _, d in sorted(adj.operands.values())],
            products=[(k, w.param, w.slice, w.transposed, j) for k, w, j in adj.products],
            state_shapes={d.name: list(d.shape) for d in rec.states},
            state_inits={d.name: float(d.init) for d in rec.states},
            output_shapes={d.name: list(d.shape) for d in rec.outputs})


def _tiles(v) -> list:
    return v if isinstance(v, list) else [v]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def lower_cell(rec: ir.Recurrence) -> Lowered:
    """The fused forward and backward kernels of a cell; raises NotACell outside the family.
    The host code takes BB, num_warps and RESIDENT from the solver at each call shape
    (`recc.tiles.launch_tiles`, templates/cell.constraints)."""
    kernel = _Kernel(rec)
    parts = kernel.sections()
    dims, shape = launch_shape(rec, "cell")
    dim = dims.get("D", rec.states[0].shape[0] if rec.states[0].shape else 1)
    if not (isinstance(dim, int) or (isinstance(dim, str) and dim.isidentifier())):
        raise ReccError(f"cell: state dim {dim!r} is not a dim name or a size")  # the checker guarantees this
    source = _environment().get_template("cell.py.jinja").render(
        **parts, launch_shape=literal(shape), launch_dim=repr(dim), spec_key=spec_key(rec))
    n_dots = len(kernel.step.dots)
    example = described(reference_tiles(rec, "cell"))
    why = (f"cell with {n_dots} param-matrix product{'s' if n_dots != 1 else ''} per step and vector states: "
           f"one fused sequential kernel per (head, tile of BB sequences), states in registers, "
           f"products as tl.dot; the backward reruns the step's adjoint in reverse time; BB, num_warps and "
           f"RESIDENT from the solver per call (H100, main shape: {example})")
    saved = [f"{s.name} per step" for s in rec.states] + [f"{n_dots} products per step (save_dots)"]
    return Lowered(strategy="cell", source=source, why=why,
                   tiles={"grid": "(H, cdiv(N, BB))", "chosen": "per call (recc.tiles)",
                          "param_tiles": [w.var[3:] for w in kernel.weights], "saved": saved})
