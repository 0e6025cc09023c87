"""IR expressions -> Triton expressions on register tiles, and their adjoints.

A value inside a recurrent kernel lives on at most two named axes:

* ``r`` (ROW): the first dim of the matrix states (K); every program holds
  all of it, ``[BK]`` with ``BK = next_pow2(K)`` and a mask;
* ``c`` (COL): the last dim of the matrix states (V); tiled, one program per
  ``BV``-wide tile of it.

So a scalar is a Triton scalar, a vector over K is ``[BK]``, a vector over V
is ``[BV]``. A state tile S[K, V] is held in one of two register orders, a
tile choice (`ORDERS`, the recurrent tile key ``ORDER``) kept as data: the
`axes` tuple of `Graph`, `StepLowering` and `Emitter` is the canonical order
of every two-axis value.

* ``"KV"``: ``[BK, BV]``, the state's own order; a warp's lanes run along V.
* ``"VK"``: ``[BV, BK]``, transposed; Triton's default layout spreads a warp's
  lanes along a tile's last dim, so with K last a K-vector (q, k, a gate) costs
  each thread a few registers instead of one per row it holds, and sums over K
  (S^T q) stay inside a warp.

Square matrices over one axis (``householder(k, beta)``, ``diag(x)``,
``outer(k, k)``) are never built: they stay linear operators (`LinOp`) and are
applied where they meet ``@`` (written here for the order KV; with VK the
emitted code indexes the transposed tile the same way)::

    householder(k, beta) @ S  ->  S - beta * k[:, None] * tl.sum(k[:, None] * S, 0)[None, :]
    diag(x) @ S               ->  x[:, None] * S
    S^T @ q                   ->  tl.sum(S * q[:, None], 0)
    outer(k, v)               ->  k[:, None] * v[None, :]

Three pieces, in the order data flows:

* `Graph`: hash-consed tile operations (`Node`), so equal subexpressions are
  computed once; arithmetic helpers fold zeros and ones.
* `StepLowering`: one step of a recurrence (its IR body) -> nodes: the new
  states and the step's outputs as functions of the previous states, the
  step's inputs, the params and the consts.
* `vjp`: reverse-mode differentiation of a set of nodes (the adjoint step).
* `Emitter`: nodes -> lines of Triton code, leaves named by the caller.

Every reduction masks the padded lanes of the axes it sums over first, so
whatever a padded lane holds (0, -inf, NaN) never reaches a valid lane.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import ir

ROW, COL = "r", "c"
# The register orders of a two-axis value, by the name of the tile choice.
ORDERS = {"VK": (COL, ROW), "KV": (ROW, COL)}


def tile_axes(order: str) -> tuple:
    """The register axes of a state tile for the tile choice `order` ("VK" or "KV")."""
    if order not in ORDERS:
        raise ValueError(f"ORDER must be one of {', '.join(map(repr, ORDERS))}, not {order!r}")
    return ORDERS[order]


class Unsupported(Exception):
    """The recurrent lowering cannot express this spec; the message says why."""


# ---- the tile-op graph ---------------------------------------------------------

class Node:
    """One tile operation. `axes` (a sub-tuple of the graph's axes) is its
    register layout; `attr` holds a leaf's name, a number, or reduced axes."""
    __slots__ = ("op", "args", "axes", "attr", "index")

    def __init__(self, op, args, axes, attr, index):
        self.op, self.args, self.axes, self.attr, self.index = op, args, axes, attr, index

    def __repr__(self):
        return f"Node#{self.index}({self.op}, {self.attr!r}, {self.axes})"


LEAVES = ("state", "input", "param", "const", "num", "dim", "cotangent", "tile0")
# elementwise primitives with one argument that lower to one node of the same name
UNARY_FNS = ("exp", "log", "sigmoid", "logsigmoid", "tanh", "softplus", "relu", "silu", "sqrt", "abs", "step",
             "neg")


class Graph:
    """Hash-consed nodes: asking twice for the same operation on the same
    children returns the same node. `axes` is the register order of a
    two-axis value (`ORDERS`); every node's axes are a sub-tuple of it."""

    def __init__(self, axes: tuple):
        self.axes = axes
        self._memo = {}
        self.nodes = []

    def union(self, *axes_list) -> tuple:
        return tuple(a for a in self.axes if any(a in axes for axes in axes_list))

    def node(self, op, args=(), axes=(), attr=None) -> Node:
        key = (op, tuple(a.index for a in args), axes, attr)
        found = self._memo.get(key)
        if found is None:
            found = Node(op, tuple(args), axes, attr, len(self.nodes))
            self._memo[key] = found
            self.nodes.append(found)
        return found

    # leaves
    def num(self, value: float) -> Node:
        return self.node("num", attr=float(value))

    def leaf(self, op: str, attr, axes=()) -> Node:
        return self.node(op, axes=axes, attr=attr)

    # arithmetic that folds the trivial cases (None stands for an absent adjoint: zero)
    def is_num(self, x, value) -> bool:
        return x is not None and x.op == "num" and x.attr == value

    def add(self, a, b):
        if a is None or self.is_num(a, 0.0):
            return b
        if b is None or self.is_num(b, 0.0):
            return a
        return self.node("add", (a, b), self.union(a.axes, b.axes))

    def sub(self, a, b):
        if b is None or self.is_num(b, 0.0):
            return a
        if a is None or self.is_num(a, 0.0):
            return self.neg(b)
        return self.node("sub", (a, b), self.union(a.axes, b.axes))

    def neg(self, a):
        if a is None:
            return None
        if a.op == "num":
            return self.num(-a.attr)
        if a.op == "neg":
            return a.args[0]
        return self.node("neg", (a,), a.axes)

    def mul(self, a, b):
        if a is None or b is None or self.is_num(a, 0.0) or self.is_num(b, 0.0):
            return None
        if self.is_num(a, 1.0):
            return b
        if self.is_num(b, 1.0):
            return a
        if a.op == "num" and b.op == "num":
            return self.num(a.attr * b.attr)
        return self.node("mul", (a, b), self.union(a.axes, b.axes))

    def div(self, a, b):
        if a is None:
            return None
        if self.is_num(b, 1.0):
            return a
        return self.node("div", (a, b), self.union(a.axes, b.axes))

    def fn(self, name: str, *args) -> Node:
        if name == "neg":
            return self.neg(args[0])
        return self.node(name, args, self.union(*(a.axes for a in args)))

    def sum(self, x, axes) -> Node | None:
        """Sum x over the given axes (those it has); masked in emission."""
        if x is None:
            return None
        axes = tuple(a for a in self.axes if a in axes and a in x.axes)
        if not axes:
            return x
        return self.node("sum", (x,), tuple(a for a in x.axes if a not in axes), axes)

    def unbroadcast(self, g, axes) -> Node | None:
        """An adjoint reduced to a value of `axes` (summing the axes it has beyond them)."""
        if g is None:
            return None
        return self.sum(g, tuple(a for a in g.axes if a not in axes))

    def broadcast(self, x, axes) -> Node:
        """x materialised on `axes` (a superset of its own), e.g. for a store or a loop-carried value."""
        if x is None:
            return self.node("zeros", axes=axes)
        if x.axes == axes:
            return x
        return self.node("broadcast", (x,), axes)


# ---- values during lowering ----------------------------------------------------

@dataclass(frozen=True)
class Val:
    """A lowered value: its node and its IR dims as axes, in IR order
    (S^T has order (c, r) on the node of S, whatever the register order)."""
    node: Node
    order: tuple


class LinOp:
    """A square matrix over one axis, kept as the linear map it applies."""
    axis: str

    def apply(self, g: Graph, x: Node) -> Node:
        raise NotImplementedError

    def transpose(self) -> "LinOp":
        raise NotImplementedError


@dataclass(frozen=True)
class Householder(LinOp):
    """I - beta k k^T (symmetric)."""
    k: Node
    beta: Node
    axis: str

    def apply(self, g, x):
        proj = g.sum(g.mul(self.k, x), (self.axis,))
        return g.sub(x, g.mul(g.mul(self.beta, self.k), proj))

    def transpose(self):
        return self


@dataclass(frozen=True)
class Diag(LinOp):
    d: Node
    axis: str

    def apply(self, g, x):
        return g.mul(self.d, x)

    def transpose(self):
        return self


@dataclass(frozen=True)
class Outer(LinOp):
    """a b^T with a, b on the same axis."""
    a: Node
    b: Node
    axis: str

    def apply(self, g, x):
        return g.mul(self.a, g.sum(g.mul(self.b, x), (self.axis,)))

    def transpose(self):
        return Outer(self.b, self.a, self.axis)


@dataclass(frozen=True)
class Scaled(LinOp):
    s: Node
    op: LinOp
    axis: str

    def apply(self, g, x):
        return g.mul(self.s, self.op.apply(g, x))

    def transpose(self):
        return Scaled(self.s, self.op.transpose(), self.axis)


@dataclass(frozen=True)
class Combined(LinOp):
    """lhs + sign * rhs."""
    lhs: LinOp
    rhs: LinOp
    sign: float
    axis: str

    def apply(self, g, x):
        y = self.rhs.apply(g, x)
        return g.add(self.lhs.apply(g, x), y if self.sign > 0 else g.neg(y))

    def transpose(self):
        return Combined(self.lhs.transpose(), self.rhs.transpose(), self.sign, self.axis)


@dataclass(frozen=True)
class Composed(LinOp):
    """outer_op @ inner_op."""
    outer_op: LinOp
    inner_op: LinOp
    axis: str

    def apply(self, g, x):
        return self.outer_op.apply(g, self.inner_op.apply(g, x))

    def transpose(self):
        return Composed(self.inner_op.transpose(), self.outer_op.transpose(), self.axis)


def apply_linop(g: Graph, op: LinOp, x: Val) -> Val:
    if op.axis not in x.order:
        raise Unsupported(f"a square matrix over axis {op.axis} meets a value without that axis")
    return Val(op.apply(g, x.node), x.order)


# ---- one step of the recurrence as nodes ---------------------------------------

@dataclass
class Step:
    """The step as nodes: states and outputs after the step, as functions of
    the leaves (state, input, param, const, num, dim)."""
    new_states: dict          # state name -> Node (axes of the state)
    outputs: dict             # output name -> Node (axes of the output)
    input_slices: dict        # input name -> sorted tuple of slice indices used (None: whole)
    col_reduced: bool         # a primal value sums over the COL axis: V cannot be tiled


class StepLowering:
    """Lower the IR body of one step onto `graph`, with dims mapped to axes."""

    def __init__(self, rec: ir.Recurrence, graph: Graph, dim_axis: dict):
        self.rec, self.g, self.dim_axis = rec, graph, dim_axis
        self.input_slices = {}

    # --- layouts of declarations
    def order_of(self, shape) -> tuple:
        order = []
        for d in shape:
            axis = self.dim_axis.get(d)
            if axis is None:
                raise Unsupported(f"dim {d} is neither the row nor the column dim of the state; a stacked "
                                  f"first dim must be read one slice at a time, like x[j]")
            order.append(axis)
        if len(set(order)) != len(order):
            raise Unsupported(f"a value of shape [{', '.join(map(str, shape))}] would need one axis twice")
        return tuple(order)

    def canonical(self, order) -> tuple:
        return tuple(a for a in self.g.axes if a in order)

    def decl_val(self, op: str, decl: ir.TensorDecl, attr=None) -> Val:
        order = self.order_of(decl.shape)
        return Val(self.g.leaf(op, decl.name if attr is None else attr, self.canonical(order)), order)

    # --- the step
    def lower(self) -> Step:
        env = {s.name: self.decl_val("state", s) for s in self.rec.states}
        outputs = {}
        for stmt in ir.unrolled(self.rec.body):
            if isinstance(stmt, ir.Let):
                env[stmt.name] = self.expr(stmt.expr, env)
            elif isinstance(stmt, ir.Assign):
                env[stmt.target] = self.as_value(self.expr(stmt.expr, env), stmt.target, self.rec.decl(stmt.target))
            elif isinstance(stmt, ir.Emit):
                decl = self.rec.decl(stmt.output)
                outputs[stmt.output] = self.as_value(self.expr(stmt.expr, env), stmt.output, decl).node
            elif isinstance(stmt, ir.Combine):
                self.combine(stmt, env)
            else:
                raise Unsupported(f"statement {type(stmt).__name__} is not lowered")
        new_states = {s.name: env[s.name].node for s in self.rec.states}
        roots = list(new_states.values()) + list(outputs.values())
        return Step(new_states, outputs, {k: tuple(sorted(v, key=lambda x: -1 if x is None else x))
                                          for k, v in self.input_slices.items()},
                    any(COL in n.attr for n in reachable(roots) if n.op == "sum"))

    def as_value(self, x, name: str, decl: ir.TensorDecl) -> Val:
        if isinstance(x, LinOp):
            raise Unsupported(f"'{name}' would be a square matrix; keep it as an operator applied with '@'")
        order = self.order_of(decl.shape)
        if x.order != order:
            if len(order) == 2 and x.order == order[::-1]:
                raise Unsupported(f"'{name}' is assigned a transposed value")
        node = x.node if x.node.axes == self.canonical(order) else self.g.broadcast(x.node, self.canonical(order))
        return Val(node, order)

    def combine(self, stmt: ir.Combine, env: dict) -> None:
        monoid = self.rec.monoid(stmt.monoid)
        left = dict(zip(monoid.elements, (self.expr(e, env) for e in stmt.left)))
        right = dict(zip(monoid.elements, (self.expr(e, env) for e in stmt.right)))
        local = {}
        operands = {monoid.left: left, monoid.right: right}
        for s in monoid.body:
            target = s.name if isinstance(s, ir.Let) else s.target
            local[target] = self.expr(s.expr, {**env, **local}, operands)
        for target, element in zip(stmt.targets, monoid.elements):
            env[target] = self.as_value(local[element], target, self.rec.decl(target))

    # --- expressions
    def expr(self, e: ir.Expr, env: dict, operands: dict | None = None):
        g = self.g
        if isinstance(e, ir.Num):
            return Val(g.num(e.value), ())
        if isinstance(e, ir.Field):
            return operands[e.operand][e.name]
        if isinstance(e, ir.Ref):
            return self.ref(e, env)
        if isinstance(e, ir.Index):
            return self.index(e)
        if isinstance(e, ir.Unary):
            x = self.expr(e.operand, env, operands)
            if e.op == "-":
                return Scaled(g.num(-1.0), x, x.axis) if isinstance(x, LinOp) else Val(g.neg(x.node), x.order)
            if isinstance(x, LinOp):
                return x.transpose()
            return Val(x.node, x.order[::-1])
        if isinstance(e, ir.Binary):
            return self.binary(e.op, self.expr(e.lhs, env, operands), self.expr(e.rhs, env, operands))
        if isinstance(e, ir.Call):
            return self.call(e.fn, [self.expr(a, env, operands) for a in e.args])
        raise Unsupported(f"expression {type(e).__name__} is not lowered")

    def ref(self, e: ir.Ref, env: dict):
        if e.kind in ("state", "let", "element"):
            return env[e.name]
        if e.kind == "input":
            self.input_slices.setdefault(e.name, set()).add(None)
            return self.decl_val("input", self.rec.decl(e.name), (e.name, None))
        if e.kind == "param":
            return self.decl_val("param", self.rec.decl(e.name))
        if e.kind == "const":
            return Val(self.g.leaf("const", e.name), ())
        if e.kind == "dim":
            return Val(self.g.leaf("dim", e.name), ())
        raise Unsupported(f"{e.kind} '{e.name}' is not lowered")

    def index(self, e: ir.Index) -> Val:
        if not (isinstance(e.base, ir.Ref) and e.base.kind in ("input", "param") and isinstance(e.index, ir.Num)):
            raise Unsupported("only an input or param can be indexed (k[j]), by a number or a loop variable")
        decl = self.rec.decl(e.base.name)
        j = int(e.index.value)
        order = self.order_of(decl.shape[1:])
        if e.base.kind == "input":
            self.input_slices.setdefault(decl.name, set()).add(j)
        return Val(self.g.leaf(e.base.kind, (decl.name, j), self.canonical(order)), order)

    def binary(self, op: str, a, b):
        g = self.g
        if op == "@":
            return self.matmul(a, b)
        if isinstance(a, LinOp) or isinstance(b, LinOp):
            return self.linop_arith(op, a, b)
        order = a.order if len(a.order) >= len(b.order) else b.order
        if op == "**":
            return Val(g.fn("pow", a.node, b.node), order)
        fn = {"+": g.add, "-": g.sub, "*": g.mul, "/": g.div}[op]
        node = fn(a.node, b.node)
        return Val(node if node is not None else g.num(0.0), order)

    def linop_arith(self, op, a, b):
        if op == "*" and isinstance(b, LinOp) and isinstance(a, Val) and not a.order:
            return Scaled(a.node, b, b.axis)
        if op == "*" and isinstance(a, LinOp) and isinstance(b, Val) and not b.order:
            return Scaled(b.node, a, a.axis)
        if op == "/" and isinstance(a, LinOp) and isinstance(b, Val) and not b.order:
            return Scaled(self.g.div(self.g.num(1.0), b.node), a, a.axis)
        if op in "+-" and isinstance(a, LinOp) and isinstance(b, LinOp) and a.axis == b.axis:
            return Combined(a, b, 1.0 if op == "+" else -1.0, a.axis)
        raise Unsupported(f"'{op}' between a square matrix and this value is not lowered")

    def matmul(self, a, b):
        g = self.g
        if isinstance(a, LinOp) and isinstance(b, LinOp):
            if a.axis != b.axis:
                raise Unsupported("product of square matrices over different dims")
            return Composed(a, b, a.axis)
        if isinstance(a, LinOp):
            if b.order[0] != a.axis:
                raise Unsupported("a square matrix multiplies a value along the wrong dim")
            return apply_linop(g, a, b)
        if isinstance(b, LinOp):
            if a.order[-1] != b.axis:
                raise Unsupported("a value multiplies a square matrix along the wrong dim")
            return apply_linop(g, b.transpose(), a)
        inner = a.order[-1]
        if b.order[0] != inner:
            raise Unsupported("inner dims of '@' map to different axes")
        order = a.order[:-1] + b.order[1:]
        if len(set(order)) != len(order):
            raise Unsupported("'@' would build a square matrix over one dim")
        return Val(g.sum(g.mul(a.node, b.node), (inner,)), order)

    def call(self, fn: str, args: list):
        g = self.g
        if fn == "householder":
            k, beta = args
            return Householder(k.node, beta.node, k.order[0])
        if fn == "diag":
            return Diag(args[0].node, args[0].order[0])
        if fn == "outer":
            a, b = args
            if a.order == b.order:
                return Outer(a.node, b.node, a.order[0])
            return Val(g.mul(a.node, b.node), a.order + b.order)
        if any(isinstance(a, LinOp) for a in args):
            raise Unsupported(f"{fn} of a square matrix is not lowered")
        if fn == "sum":
            return Val(g.sum(args[0].node, g.axes), ())
        if fn == "dot":
            a, b = args
            return Val(g.sum(g.mul(a.node, b.node), a.order), ())
        if fn == "l2norm":
            x = args[0]
            return Val(g.div(x.node, g.fn("sqrt", g.sum(g.mul(x.node, x.node), x.order))), x.order)
        if fn == "rowsum":
            x = args[0]
            return Val(g.sum(x.node, x.order[-1:]), x.order[:-1])
        if fn in UNARY_FNS:
            return Val(g.fn(fn, args[0].node), args[0].order)
        if fn in ("max", "min"):
            a, b = args
            return Val(g.fn(fn, a.node, b.node), a.order if len(a.order) >= len(b.order) else b.order)
        raise Unsupported(f"function {fn} is not lowered by the recurrent strategy")


def reachable(roots, stop=()) -> list:
    """Nodes reachable from roots, children before parents; the search does
    not go below nodes whose index is in `stop`."""
    seen, order = set(), []
    stack = [(r, False) for r in roots if r is not None]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node.index in seen:
            continue
        seen.add(node.index)
        stack.append((node, True))
        if node.index not in stop:
            stack.extend((c, False) for c in node.args if c.index not in seen)
    return order


# ---- reverse mode --------------------------------------------------------------

def vjp(g: Graph, cotangents: list) -> dict:
    """Adjoints of every node that the given (node, cotangent) pairs reach
    back to: a dict node index -> adjoint node. An adjoint may lack axes of its
    node (it is then the same along them); `Graph.broadcast` fills them in."""
    order = reachable([node for node, _ in cotangents])
    adj = {}
    for node, cot in cotangents:
        adj[node.index] = g.add(adj.get(node.index), cot)
    for node in reversed(order):
        gbar = adj.get(node.index)
        if gbar is None or node.op in LEAVES:
            continue
        for child, contribution in _vjp_rule(g, node, gbar):
            if contribution is not None:
                adj[child.index] = g.add(adj.get(child.index), g.unbroadcast(contribution, child.axes))
    return adj


def _vjp_rule(g: Graph, node: Node, gbar: Node) -> list:
    op, args = node.op, node.args
    one = g.num(1.0)
    if op == "add":
        return [(args[0], gbar), (args[1], gbar)]
    if op == "sub":
        return [(args[0], gbar), (args[1], g.neg(gbar))]
    if op == "neg":
        return [(args[0], g.neg(gbar))]
    if op == "mul":
        a, b = args
        return [(a, g.mul(gbar, b)), (b, g.mul(gbar, a))]
    if op == "div":
        a, b = args
        return [(a, g.div(gbar, b)), (b, g.neg(g.div(g.mul(gbar, node), b)))]
    if op == "pow":
        a, b = args
        da = g.mul(gbar, g.mul(b, g.fn("pow", a, g.sub(b, one)))) if b.op != "num" else \
            g.mul(gbar, g.mul(b, _power(g, a, b.attr - 1.0)))
        db = None if b.op == "num" else g.mul(gbar, g.mul(node, g.fn("log", a)))
        return [(a, da), (b, db)]
    if op == "sum":
        return [(args[0], gbar)]
    if op == "broadcast":
        return [(args[0], gbar)]
    if op == "max_weight":
        return []
    if op in ("max", "min"):
        a, b = args
        pick_a = g.fn("max_weight", a, b) if op == "max" else g.fn("max_weight", b, a)
        return [(a, g.mul(gbar, pick_a)), (b, g.sub(gbar, g.mul(gbar, pick_a)))]
    x = args[0]
    local = {
        "exp": lambda: node,
        "log": lambda: g.div(one, x),
        "sigmoid": lambda: g.mul(node, g.sub(one, node)),
        "logsigmoid": lambda: g.sub(one, g.fn("sigmoid", x)),
        "tanh": lambda: g.sub(one, g.mul(node, node)),
        "softplus": lambda: g.fn("sigmoid", x),
        "relu": lambda: g.fn("step", x),
        "silu": lambda: _silu_slope(g, x),
        "sqrt": lambda: g.div(g.num(0.5), node),
        "abs": lambda: g.sub(g.mul(g.num(2.0), g.fn("max_weight", x, g.num(0.0))), one),
        "step": lambda: None,
    }[op]()
    return [(x, g.mul(gbar, local))]


def _power(g: Graph, a: Node, exponent: float) -> Node:
    if exponent == 0.0:
        return g.num(1.0)
    if exponent == 1.0:
        return a
    return g.fn("pow", a, g.num(exponent))


def _silu_slope(g: Graph, x: Node) -> Node:
    s = g.fn("sigmoid", x)
    return g.add(s, g.mul(g.mul(x, s), g.sub(g.num(1.0), s)))


# ---- Triton text ---------------------------------------------------------------

class Namer:
    """Fresh local names: a wanted name if free, else the name with a number."""

    def __init__(self, taken=()):
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        name, n = base, 2
        while name in self.taken:
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        return name


def _num_text(v: float) -> str:
    if v == float("inf"):
        return 'float("inf")'
    if v == -float("inf"):
        return '-float("inf")'
    return repr(float(v))


class Emitter:
    """Turns nodes into assignment lines. `names` maps node index -> the text
    that stands for it (leaves are put there by the caller); `tiles` names the
    block sizes and masks: keys BR, BC, row_mask, col_mask, tile_mask (a mask
    in the register order `axes`)."""

    def __init__(self, namer: Namer, tiles: dict, axes: tuple, names: dict | None = None):
        self.namer, self.tiles, self.axes = namer, tiles, axes
        self.names = dict(names or {})

    def shape(self, axes) -> str:
        return "[" + ", ".join(self.tiles["BR"] if a == ROW else self.tiles["BC"] for a in axes) + "]"

    def mask(self, axes) -> str:
        return {(ROW,): self.tiles["row_mask"], (COL,): self.tiles["col_mask"],
                self.axes: self.tiles["tile_mask"]}[axes]

    def expand(self, text: str, axes: tuple, to: tuple) -> str:
        """x on `axes` written so that it broadcasts against values on `to`."""
        if axes == to or not axes or len(to) < 2:
            return text
        return f"{text}[:, None]" if to.index(axes[0]) == 0 else f"{text}[None, :]"

    def emit(self, roots, lines: list, base: str = "x") -> None:
        """Append the lines computing every root not yet named."""
        for node in reachable(roots, self.names):
            if node.index in self.names:
                continue
            if node.op == "num":
                self.names[node.index] = _num_text(node.attr)
                continue
            if node.op in LEAVES:
                raise KeyError(f"leaf {node!r} has no name")
            name = self.namer.fresh(base)
            lines.append(f"{name} = {self.text(node)}")
            self.names[node.index] = name

    def ref(self, child: Node, to: tuple) -> str:
        text = self.names[child.index]
        if child.op == "num" and text.startswith("-"):
            text = f"({text})"
        return self.expand(text, child.axes, to)

    def text(self, node: Node) -> str:
        op, axes = node.op, node.axes
        a = [self.ref(c, axes) for c in node.args]
        infix = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
        if op in infix:
            return f"{a[0]} {infix[op]} {a[1]}"
        if op == "neg":
            return f"-{a[0]}"
        if op == "sum":
            return self.reduce(node)
        if op == "broadcast":
            return f"tl.zeros({self.shape(axes)}, dtype=tl.float32) + {a[0]}"
        if op == "zeros":
            return f"tl.zeros({self.shape(axes)}, dtype=tl.float32)"
        if op == "pow":
            return self.power(node, a)
        simple = {
            "exp": "tl.exp({0})", "log": "tl.log({0})", "sigmoid": "tl.sigmoid({0})", "sqrt": "tl.sqrt({0})",
            "abs": "tl.abs({0})", "relu": "tl.maximum({0}, 0.0)", "silu": "{0} * tl.sigmoid({0})",
            "tanh": "2.0 * tl.sigmoid(2.0 * {0}) - 1.0",
            "logsigmoid": "tl.minimum({0}, 0.0) - tl.log(1.0 + tl.exp(-tl.abs({0})))",
            "softplus": "tl.maximum({0}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({0})))",
            "step": "tl.where({0} > 0, 1.0, 0.0)",
            "max": "tl.maximum({0}, {1})", "min": "tl.minimum({0}, {1})",
            # d max(a, b) / da; a tie splits the gradient evenly, as torch does
            "max_weight": "tl.where({0} > {1}, 1.0, tl.where({0} == {1}, 0.5, 0.0))",
        }
        return simple[op].format(*a)

    def power(self, node: Node, a: list) -> str:
        base, exponent = node.args
        if exponent.op == "num":
            e = exponent.attr
            if e == 2.0:
                return f"{a[0]} * {a[0]}"
            if e == 0.5:
                return f"tl.sqrt({a[0]})"
            if e == -1.0:
                return f"1.0 / {a[0]}"
            if e == -0.5:
                return f"1.0 / tl.sqrt({a[0]})"
        return f"tl.exp({a[1]} * tl.log({a[0]}))"

    def reduce(self, node: Node) -> str:
        x = node.args[0]
        summed = node.attr
        mask = self.mask(summed)
        mask = self.expand(mask, summed, x.axes)
        inner = f"tl.where({mask}, {self.names[x.index]}, 0.0)"
        if len(summed) == len(x.axes):
            return f"tl.sum({inner})" if len(x.axes) == 2 else f"tl.sum({inner}, 0)"
        return f"tl.sum({inner}, {x.axes.index(summed[0])})"
