"""Stage 2: syntax tree -> typed IR (`recc.ir.Recurrence`), checking as it goes.

Checks names, shapes, arity, annotations, that every state is updated, every
output defined and every dim inferable. The first problem found raises a
`SpecError` naming the file, line and column.
"""
from __future__ import annotations

import difflib
import keyword
import math
from dataclasses import dataclass
from pathlib import Path

from lark import Token, Tree

from . import ir
from .errors import ReccError, SpecError
from .parse import parse
from .primitives import ANNOTATIONS, PRIMITIVES, ShapeMismatch

# Names the generated code uses itself, and the implicit axes.
RESERVED = frozenset({
    "torch", "triton", "tl", "math", "reference", "inf",
    "initial_state", "output_final_state", "cu_seqlens",
    "B", "T", "H",
})
TOPOLOGIES_LATER = ("grid2d", "dag")
MAX_DEPTH = 100  # expressions nested deeper than this are refused (no recursion blow-up later)


def _reserved_why(name: str) -> str | None:
    """Why `name` cannot be declared, or None if it can."""
    if name in ("B", "T", "H"):
        return "B, T and H are the implicit batch, time and head axes"
    if name == "inf":
        return "it means infinity"
    if name in ("torch", "triton", "tl", "math"):
        return "the generated module imports it"
    if name in RESERVED:
        return "the generated op and its module use it"
    if keyword.iskeyword(name):
        return "it is a Python keyword"
    if name.startswith("_"):
        return "names starting with '_' belong to the generated code"
    return None


def load(path: str | Path) -> ir.Recurrence:
    """Read and check a spec file; errors for a missing or non-UTF-8 file too."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReccError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ReccError(f"{path}: is a directory, not a spec file") from None
    except OSError as e:
        raise ReccError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReccError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return check(text, str(path))


def check(source: str, file: str = "<spec>") -> ir.Recurrence:
    """Parse and check spec text; return its typed IR."""
    tree = parse(source, file)
    return _Checker(source, file).recurrence(tree.children[0])


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape else "a scalar"


@dataclass
class _Symbol:
    kind: str            # dim, input, param, state, const, let, loop, output, monoid, element
    shape: tuple
    pos: ir.Pos
    extra: object = None  # dim size; loop range; monoid


def _article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _pos(node) -> ir.Pos:
    if isinstance(node, Token):
        return ir.Pos(node.line, node.column)
    return ir.Pos(node.meta.line, node.meta.column)


class _Checker:
    def __init__(self, source: str, file: str):
        self.source, self.file = source, file
        self.symbols: dict[str, _Symbol] = {}
        self.assigned: set[str] = set()
        self.defined_outputs: set[str] = set()
        self.decls = {k: [] for k in ("dims", "inputs", "params", "consts", "states", "outputs", "monoids")}
        self.monoid_ctx = None      # (left, right, elements, name) while checking a monoid's body
        self._in_index = False      # loop variables may appear only inside an index
        self._depth = 0             # nesting of the expression being checked

    # ---- helpers -------------------------------------------------------------

    def fail(self, message: str, at) -> None:
        p = at if isinstance(at, ir.Pos) else _pos(at)
        raise SpecError(message, p.line, p.col, self.file, self.source)

    def declare(self, tok: Token, kind: str, shape=(), extra=None) -> None:
        name = str(tok)
        if name in self.symbols:
            prev = self.symbols[name]
            self.fail(f"'{name}' is already declared as {_article(prev.kind)} at {prev.pos}", tok)
        if name in PRIMITIVES:
            self.fail(f"'{name}' is a built-in function and cannot be declared", tok)
        why = _reserved_why(name)
        if why:
            self.fail(f"'{name}' is a reserved name: {why}", tok)
        self.symbols[name] = _Symbol(kind, shape, _pos(tok), extra)

    def norm(self, shape) -> tuple:
        """A shape with fixed-size dims replaced by their sizes, for comparison."""
        out = []
        for d in shape:
            sym = self.symbols.get(d) if isinstance(d, str) else None
            out.append(sym.extra if sym is not None and sym.extra is not None else d)
        return tuple(out)

    def same(self, a, b) -> bool:
        return self.norm(a) == self.norm(b)

    def undeclared(self, name: str, at, hint: str = "") -> None:
        close = difflib.get_close_matches(name, [n for n, s in self.symbols.items() if s.kind != "monoid"], 1)
        suggestion = f"; did you mean '{close[0]}'?" if close else hint
        self.fail(f"'{name}' is not declared{suggestion}", at)

    # ---- the recurrence -------------------------------------------------------

    def recurrence(self, tree: Tree) -> ir.Recurrence:
        name_tok, topology, *items = tree.children
        name = str(name_tok)
        why = _reserved_why(name) or ("it is a built-in function" if name in PRIMITIVES else None)
        if why:
            self.fail(f"'{name}' cannot name a recurrence: {why}", name_tok)
        if topology is not None:
            topo = topology.children[0]
            if str(topo) in TOPOLOGIES_LATER:
                self.fail(f"recurrences over {topo} are not supported yet (pLSTM line graphs come in a later "
                          f"release); remove 'over {topo}' for a sequence recurrence", topo)
            self.fail(f"unknown topology '{topo}', expected one of: {', '.join(TOPOLOGIES_LATER)}", topo)
        body = []
        for item in items:
            stmt = getattr(self, "item_" + item.data)(item)
            if stmt is not None:
                body.append(stmt)
        self.finish(name_tok)
        return ir.Recurrence(
            name=name, topology="sequence",
            dims=tuple(self.decls["dims"]), inputs=tuple(self.decls["inputs"]),
            params=tuple(self.decls["params"]), consts=tuple(self.decls["consts"]),
            states=tuple(self.decls["states"]), outputs=tuple(self.decls["outputs"]),
            body=tuple(body), monoids=tuple(self.decls["monoids"]),
            source=self.source, file=self.file,
        )

    def finish(self, header: Token) -> None:
        if not self.decls["states"]:
            self.fail(f"recurrence '{header}' declares no state; add one like `state S[K, V]`", header)
        if not self.decls["outputs"]:
            self.fail(f"recurrence '{header}' declares no output; add one like `output o[V] = S^T @ q`", header)
        for s in self.decls["states"]:
            if s.name not in self.assigned:
                self.fail(f"state '{s.name}' is never updated; add `{s.name} = ...` to the step", s.pos)
        for o in self.decls["outputs"]:
            if o.name not in self.defined_outputs:
                self.fail(f"output '{o.name}' is never defined; add `{o.name} = ...` to the step", o.pos)
        used = {d for t in self.decls["inputs"] + self.decls["params"] for d in t.shape}
        for d in self.decls["dims"]:
            if d.size is None and d.name not in used:
                self.fail(f"dim '{d.name}' cannot be inferred: no input or param has it in its shape; "
                          f"give it a size (`{d.name} = 64`) or use it in an input", d.pos)

    # ---- declarations ---------------------------------------------------------

    def item_dims_decl(self, tree: Tree):
        for dim in tree.children:
            name, size = dim.children
            value = int(size) if size is not None else None
            if value is not None and value < 1:
                self.fail(f"dim '{name}' must have a positive size, got {value}", size)
            self.declare(name, "dim", (), value)
            self.decls["dims"].append(ir.DimDecl(str(name), value, _pos(name)))

    def shape(self, tree) -> tuple:
        if tree is None:
            return ()
        dims = []
        for ref in tree.children:
            tok = ref.children[0]
            if tok.type == "INT":
                if int(tok) < 1:
                    self.fail(f"a shape's sizes must be positive, got {tok}", tok)
                dims.append(int(tok))
                continue
            sym = self.symbols.get(str(tok))
            if sym is None or sym.kind != "dim":
                known = ", ".join(d.name for d in self.decls["dims"]) or "none"
                self.fail(f"unknown dim '{tok}' in shape; declared dims: {known}", tok)
            dims.append(str(tok))
        return tuple(dims)

    def annotation(self, tree) -> ir.Annotation:
        name_tok, *args = tree.children
        args = [a for a in args if a is not None]
        kind = ANNOTATIONS.get(str(name_tok))
        if kind is None:
            close = difflib.get_close_matches(str(name_tok), sorted(ANNOTATIONS), 1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.fail(f"unknown annotation '{name_tok}'; {hint}annotations: {', '.join(sorted(ANNOTATIONS))}",
                      name_tok)
        values = tuple(self.signed_number(a) for a in args)
        if len(values) != kind.arity:
            takes = "no numbers" if kind.arity == 0 else f"{kind.arity} number{'s' if kind.arity > 1 else ''}"
            self.fail(f"annotation '{name_tok}' takes {takes}, got {len(values)}", name_tok)
        if kind.name == "range" and not all(math.isfinite(v) for v in values):
            self.fail(f"range({values[0]:g}, {values[1]:g}) needs finite bounds", name_tok)
        if kind.name == "range" and not values[0] < values[1]:
            self.fail(f"range({values[0]:g}, {values[1]:g}) is empty: the low end must be below the high end",
                      name_tok)
        return ir.Annotation(kind.name, values)

    def signed_number(self, tree: Tree) -> float:
        tok = tree.children[0]
        value = math.inf if tok.type == "INF" else float(tok)
        return -value if tree.data == "negative_number" else value

    def _tensors(self, tree: Tree, kind: str, bucket: str):
        for var in tree.children:
            name, shape_tree, ann = var.children
            shape = self.shape(shape_tree)
            anns = (self.annotation(ann),) if ann is not None else ()
            self.declare(name, kind, shape)
            self.decls[bucket].append(ir.TensorDecl(str(name), shape, _pos(name), anns))

    def item_input_decl(self, tree: Tree):
        self._tensors(tree, "input", "inputs")

    def item_param_decl(self, tree: Tree):
        self._tensors(tree, "param", "params")

    def item_state_decl(self, tree: Tree):
        for var in tree.children:
            name, shape_tree, init = var.children
            shape = self.shape(shape_tree)
            value = self.signed_number(init) if init is not None else 0.0
            self.declare(name, "state", shape)
            self.decls["states"].append(ir.TensorDecl(str(name), shape, _pos(name), (), value))

    def item_const_decl(self, tree: Tree):
        name, expr_tree = tree.children
        expr = self.expr(expr_tree, "const")
        if expr.shape != ():
            self.fail(f"const '{name}' must be a scalar, got {fmt_shape(expr.shape)}", expr_tree)
        self.declare(name, "const")
        self.decls["consts"].append(ir.ConstDecl(str(name), expr, _pos(name)))

    # ---- statements -----------------------------------------------------------

    def item_let_stmt(self, tree: Tree, ctx: str = "step"):
        name, expr_tree = tree.children
        expr = self.expr(expr_tree, ctx)
        self.declare(name, "let", expr.shape)
        return ir.Let(str(name), expr, _pos(name))

    def item_assign_stmt(self, tree: Tree, in_loop: bool = False):
        name, expr_tree = tree.children
        sym = self.symbols.get(str(name))
        if sym is None:
            self.undeclared(str(name), name, f"; declare it with `state {name}[...]`")
        if sym.kind == "output":
            if in_loop:
                self.fail(f"output '{name}' cannot be defined inside a for loop", name)
            if str(name) in self.defined_outputs:
                self.fail(f"output '{name}' is defined twice", name)
            expr = self.expr(expr_tree, "step")
            self.expect_shape(expr, sym.shape, f"output '{name}'", expr_tree)
            self.defined_outputs.add(str(name))
            return ir.Emit(str(name), expr, _pos(name))
        if sym.kind != "state":
            self.fail(f"cannot assign to {sym.kind} '{name}': only states and outputs are assigned", name)
        expr = self.expr(expr_tree, "step")
        self.expect_shape(expr, sym.shape, f"state '{name}'", expr_tree)
        self.assigned.add(str(name))
        return ir.Assign(str(name), expr, _pos(name))

    def expect_shape(self, expr: ir.Expr, shape: tuple, what: str, at) -> None:
        if not self.same(expr.shape, shape):
            self.fail(f"{what} has shape {fmt_shape(shape)} but the right side has shape "
                      f"{fmt_shape(expr.shape)}", at)

    def item_output_stmt(self, tree: Tree):
        name, shape_tree, expr_tree = tree.children
        if shape_tree is None and expr_tree is None:
            self.fail(f"output '{name}' needs a shape or a definition, like `output {name}[V] = ...`", name)
        if expr_tree is None:
            self.declare(name, "output", self.shape(shape_tree))
            self.decls["outputs"].append(ir.TensorDecl(str(name), self.symbols[str(name)].shape, _pos(name)))
            return None
        expr = self.expr(expr_tree, "step")
        shape = expr.shape
        if shape_tree is not None:
            shape = self.shape(shape_tree)
            self.expect_shape(expr, shape, f"output '{name}'", expr_tree)
        self.declare(name, "output", shape)
        self.defined_outputs.add(str(name))
        self.decls["outputs"].append(ir.TensorDecl(str(name), shape, _pos(name)))
        return ir.Emit(str(name), expr, _pos(name))

    def bound(self, tree: Tree) -> int:
        tok = tree.children[0]
        if tok.type == "INT":
            return int(tok)
        sym = self.symbols.get(str(tok))
        if sym is None or sym.kind != "dim" or sym.extra is None:
            self.fail(f"a loop bound must be an integer or a dim of fixed size, got '{tok}'", tok)
        return sym.extra

    def item_for_stmt(self, tree: Tree):
        var, lo_tree, hi_tree, *stmts = tree.children
        lo, hi = self.bound(lo_tree), self.bound(hi_tree)
        if hi <= lo:
            self.fail(f"the loop {lo}..{hi} is empty", lo_tree)
        self.declare(var, "loop", (), (lo, hi))
        before = set(self.symbols)
        body = []
        for s in stmts:
            if s.data == "assign_stmt":
                body.append(self.item_assign_stmt(s, in_loop=True))
            else:
                body.append(self.item_let_stmt(s))
        for name in set(self.symbols) - before:  # lets are local to the loop body
            del self.symbols[name]
        del self.symbols[str(var)]
        return ir.For(str(var), lo, hi, tuple(body), _pos(tree))

    def item_tuple_assign_stmt(self, tree: Tree):
        *targets, expr_tree = tree.children
        if expr_tree.data != "call" or self.symbols.get(str(expr_tree.children[0]), _Symbol("", (), None)).kind != "monoid":
            self.fail("a tuple assignment needs a monoid combine on the right, like `m, s = lse((m, s), (x, 1))`",
                      expr_tree)
        fn_tok, *args = expr_tree.children
        args = [a for a in args if a is not None]
        monoid: ir.Monoid = self.symbols[str(fn_tok)].extra
        n = len(monoid.elements)
        if len(targets) != n:
            self.fail(f"monoid '{fn_tok}' has {n} elements ({', '.join(monoid.elements)}) but {len(targets)} "
                      f"states are assigned", targets[0])
        shapes = []
        for i, t in enumerate(targets):
            if str(t) in map(str, targets[:i]):
                self.fail(f"'{t}' is assigned twice in one tuple assignment", t)
            sym = self.symbols.get(str(t))
            if sym is None:
                self.undeclared(str(t), t)
            if sym.kind != "state":
                self.fail(f"cannot assign to {sym.kind} '{t}': a monoid combine updates states", t)
            shapes.append(sym.shape)
            self.assigned.add(str(t))
        # elements are combined elementwise: scalars broadcast against one common shape
        common = max(shapes, key=len)
        for t, s in zip(targets, shapes):
            if s != () and not self.same(s, common):
                self.fail(f"states combined by a monoid need one shape (or a scalar): "
                          f"'{targets[shapes.index(common)]}' is {fmt_shape(common)}, '{t}' is {fmt_shape(s)}", t)
        if len(args) != 2:
            self.fail(f"monoid '{fn_tok}' combines 2 operands, got {len(args)}", fn_tok)
        sides = []
        for arg in args:
            items = arg.children if arg.data == "tuple" else [arg]
            if len(items) != n:
                self.fail(f"each operand of monoid '{fn_tok}' needs {n} items, got {len(items)}", arg)
            exprs = []
            for item, shape in zip(items, shapes):
                e = self.expr(item, "step")
                if e.shape != () and not self.same(e.shape, shape):
                    self.fail(f"an operand item of monoid '{fn_tok}' must be a scalar or have its state's shape "
                              f"{fmt_shape(shape)}, got {fmt_shape(e.shape)}", item)
                exprs.append(e)
            sides.append(tuple(exprs))
        return ir.Combine(tuple(str(t) for t in targets), str(fn_tok), sides[0], sides[1], _pos(tree))

    def item_monoid_decl(self, tree: Tree):
        name, left, right, *items = tree.children
        if str(left) == str(right):
            self.fail("a monoid's two operands need different names", right)
        if not items or items[0].data != "elements_decl":
            self.fail(f"monoid '{name}' must start with `elements ...`", items[0] if items else name)
        elements = [str(e) for e in items[0].children]
        if len(set(elements)) != len(elements):
            self.fail(f"monoid '{name}' repeats an element", items[0])
        outer = dict(self.symbols)
        self.monoid_ctx = (str(left), str(right), elements, str(name))
        identity, body, done = (), [], set()
        for item in items[1:]:
            if item.data == "elements_decl":
                self.fail(f"monoid '{name}' declares its elements twice", item)
            elif item.data == "identity_decl":
                if identity:
                    self.fail(f"monoid '{name}' declares its identity twice", item)
                values = {}
                for iv in item.children:
                    ename, num = iv.children
                    if str(ename) not in elements:
                        self.fail(f"'{ename}' is not an element of monoid '{name}' (elements: {', '.join(elements)})",
                                  ename)
                    if str(ename) in values:
                        self.fail(f"the identity of monoid '{name}' gives '{ename}' twice", ename)
                    values[str(ename)] = self.signed_number(num)
                missing = [e for e in elements if e not in values]
                if missing:
                    self.fail(f"the identity of monoid '{name}' misses {', '.join(missing)}", item)
                identity = tuple(values[e] for e in elements)
            elif item.data == "let_stmt":
                let_name = item.children[0]
                if str(let_name) in elements:
                    self.fail(f"'{let_name}' is an element of monoid '{name}'; a let needs another name", let_name)
                body.append(self.item_let_stmt(item, ctx="monoid"))
            else:
                ename, expr_tree = item.children
                if str(ename) not in elements:
                    self.fail(f"'{ename}' is not an element of monoid '{name}' (elements: {', '.join(elements)})",
                              ename)
                if str(ename) in done:
                    self.fail(f"element '{ename}' of monoid '{name}' is assigned twice", ename)
                expr = self.expr(expr_tree, "monoid")
                if expr.shape != ():
                    self.fail(f"monoid elements are scalars, got {fmt_shape(expr.shape)}", expr_tree)
                self.symbols[str(ename)] = _Symbol("element", (), _pos(ename))
                done.add(str(ename))
                body.append(ir.Assign(str(ename), expr, _pos(ename)))
        missing = [e for e in elements if e not in done]
        if missing:
            self.fail(f"monoid '{name}' never assigns its element{'s' if len(missing) > 1 else ''} "
                      f"{', '.join(missing)}; add `{missing[0]} = ...` to its body", name)
        self.symbols = outer
        self.monoid_ctx = None
        monoid = ir.Monoid(str(name), str(left), str(right), tuple(elements), identity, tuple(body), _pos(name))
        self.declare(name, "monoid", (), monoid)
        self.decls["monoids"].append(monoid)

    # ---- expressions ----------------------------------------------------------

    def expr(self, tree, ctx: str) -> ir.Expr:
        if self._depth >= MAX_DEPTH:
            self.fail(f"expression nested more than {MAX_DEPTH} levels deep; split it with `let`", tree)
        self._depth += 1
        try:
            return getattr(self, "expr_" + tree.data)(tree, ctx)
        finally:
            self._depth -= 1

    def expr_number(self, tree, ctx):
        return ir.Num(float(tree.children[0]), _pos(tree))

    def expr_name(self, tree, ctx):
        tok = tree.children[0]
        name = str(tok)
        sym = self.symbols.get(name)
        if sym is None:
            if name == "inf":
                return ir.Num(math.inf, _pos(tok))
            if ctx == "monoid" and name in self.monoid_ctx[:2]:
                self.fail(f"read an element of '{name}' with a field, like {name}.{self.monoid_ctx[2][0]}", tok)
            self.undeclared(name, tok)
        allowed = {
            "const": {"dim", "const"},
            "step": {"input", "param", "state", "let", "const", "dim", "loop"},
            "monoid": {"element", "let", "const"},
        }[ctx]
        if sym.kind not in allowed:
            if ctx == "const":
                self.fail(f"a const can use only numbers, dims and earlier consts, not {sym.kind} '{name}'", tok)
            if sym.kind == "output":
                self.fail(f"'{name}' is an output; outputs cannot be read", tok)
            if sym.kind == "monoid":
                self.fail(f"'{name}' is a monoid; call it as {name}((...), (...))", tok)
            if ctx == "monoid":
                left, right, elements = self.monoid_ctx[:3]
                self.fail(f"a monoid reads only its operands' elements ({left}.{elements[0]}, {right}.{elements[0]}, "
                          f"...), the elements it assigned before, its lets and consts; not {sym.kind} '{name}'", tok)
            self.fail(f"{sym.kind} '{name}' cannot be used here", tok)
        if sym.kind == "loop" and not self._in_index:
            self.fail(f"loop variable '{name}' can only be used as an index, like k[{name}]", tok)
        if sym.kind == "dim" and sym.extra is not None:
            return ir.Num(float(sym.extra), _pos(tok))
        return ir.Ref(name, sym.kind, sym.shape, _pos(tok))

    def expr_call(self, tree, ctx):
        fn_tok, *args = tree.children
        args = [a for a in args if a is not None]
        fn = str(fn_tok)
        sym = self.symbols.get(fn)
        if sym is not None and sym.kind == "monoid":
            self.fail(f"monoid '{fn}' can only be applied in a tuple assignment, like "
                      f"`{', '.join(sym.extra.elements)} = {fn}((...), (...))`", fn_tok)
        prim = PRIMITIVES.get(fn)
        if prim is None:
            close = difflib.get_close_matches(fn, sorted(PRIMITIVES), 1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            self.fail(f"unknown function '{fn}'{hint}", fn_tok)
        if prim.arity >= 0 and len(args) != prim.arity:
            plural = "s" if prim.arity != 1 else ""
            self.fail(f"{fn} takes {prim.arity} argument{plural}, got {len(args)}", fn_tok)
        exprs = tuple(self.expr(a, ctx) for a in args)
        if ctx == "monoid" and not prim.elementwise:
            self.fail(f"{fn} is not elementwise and cannot be used in a monoid", fn_tok)
        try:
            shape = prim.shape([self.norm(e.shape) for e in exprs])
        except ShapeMismatch as e:
            self.fail(str(e), fn_tok)
        shape = self._denorm(shape, [e.shape for e in exprs])
        return ir.Call(fn, exprs, shape, _pos(fn_tok))

    def _denorm(self, shape, sources) -> tuple:
        """Give a rule's (normalised) result shape back its dim names where possible."""
        names = {}
        for s in sources:
            for d in s:
                names.setdefault(self.norm((d,))[0], d)
        return tuple(names.get(d, d) for d in shape)

    def _operator(self, tree, op: str) -> ir.Pos:
        """The position of a binary expression's operator: the first `op` after its left operand."""
        at = self.source.find(op, tree.children[0].meta.end_pos)
        if at < 0:  # pragma: no cover - the parser saw the operator
            return _pos(tree)
        line = self.source.count("\n", 0, at) + 1
        return ir.Pos(line, at - (self.source.rfind("\n", 0, at) + 1) + 1)

    def _binary(self, tree, ctx, op):
        lhs = self.expr(tree.children[0], ctx)
        rhs = self.expr(tree.children[1], ctx)
        a, b = lhs.shape, rhs.shape
        if op == "@":
            shape = self._matmul_shape(a, b, self._operator(tree, op))
        elif op == "**":
            if b != ():
                self.fail(f"the exponent of '**' must be a scalar, got {fmt_shape(b)}", tree.children[1])
            shape = a
        elif self.same(a, b) or b == ():
            shape = a
        elif a == ():
            shape = b
        else:
            self.fail(f"shapes {fmt_shape(a)} and {fmt_shape(b)} do not match for '{op}'", self._operator(tree, op))
        return ir.Binary(op, lhs, rhs, shape, _pos(tree))

    def _matmul_shape(self, a, b, tree):
        if self.monoid_ctx is not None:
            self.fail("'@' cannot be used in a monoid: elements are scalars", tree)
        na, nb = self.norm(a), self.norm(b)
        if len(a) == 0 or len(b) == 0:
            self.fail(f"'@' needs vectors or matrices, got {fmt_shape(a)} @ {fmt_shape(b)}; use '*' for scalars",
                      tree)
        if len(a) == 1 and len(b) == 1:
            self.fail(f"'@' of two vectors ({fmt_shape(a)} @ {fmt_shape(b)}) is ambiguous; use dot(x, y) for the "
                      f"inner product or outer(x, y) for the outer product", tree)
        if len(b) == 1:                      # [..., m, k] @ [k]
            if na[-1] != nb[0]:
                self.fail(f"cannot multiply {fmt_shape(a)} @ {fmt_shape(b)}: inner dims {a[-1]} and {b[0]} differ",
                          tree)
            return a[:-1]
        if len(a) == 1:                      # [k] @ [..., k, n]
            if na[0] != nb[-2]:
                self.fail(f"cannot multiply {fmt_shape(a)} @ {fmt_shape(b)}: inner dims {a[0]} and {b[-2]} differ",
                          tree)
            return b[:-2] + b[-1:]
        if na[-1] != nb[-2]:
            self.fail(f"cannot multiply {fmt_shape(a)} @ {fmt_shape(b)}: inner dims {a[-1]} and {b[-2]} differ", tree)
        sa, sb = a[:-2], b[:-2]
        if sa and sb and self.norm(sa) != self.norm(sb):
            self.fail(f"cannot multiply {fmt_shape(a)} @ {fmt_shape(b)}: stacked dims differ", tree)
        return (sa or sb) + a[-2:-1] + b[-1:]

    def expr_add(self, tree, ctx):
        return self._binary(tree, ctx, "+")

    def expr_sub(self, tree, ctx):
        return self._binary(tree, ctx, "-")

    def expr_mul(self, tree, ctx):
        return self._binary(tree, ctx, "*")

    def expr_div(self, tree, ctx):
        return self._binary(tree, ctx, "/")

    def expr_matmul(self, tree, ctx):
        return self._binary(tree, ctx, "@")

    def expr_pow(self, tree, ctx):
        return self._binary(tree, ctx, "**")

    def expr_neg(self, tree, ctx):
        operand = self.expr(tree.children[0], ctx)
        if isinstance(operand, ir.Num):
            return ir.Num(-operand.value, _pos(tree))
        return ir.Unary("-", operand, operand.shape, _pos(tree))

    def expr_transpose(self, tree, ctx):
        operand = self.expr(tree.children[0], ctx)
        if len(operand.shape) < 2:
            what = "a vector " if len(operand.shape) == 1 else ""
            self.fail(f"'^T' needs a matrix, got {what}{fmt_shape(operand.shape)}; '@' takes a vector on either "
                      f"side as it is", tree)
        s = operand.shape
        return ir.Unary("T", operand, s[:-2] + (s[-1], s[-2]), _pos(tree))

    def expr_index(self, tree, ctx):
        base = self.expr(tree.children[0], ctx)
        if not base.shape:
            self.fail("only a stacked value can be indexed, this is a scalar", tree)
        size = self.norm(base.shape[:1])[0]
        if not isinstance(size, int):
            self.fail(f"indexing needs a dim of fixed size, but '{size}' is set at call time; "
                      f"declare it like `{size} = 2`", tree)
        self._in_index = True
        try:
            index = self.expr(tree.children[1], ctx)
        finally:
            self._in_index = False
        if isinstance(index, ir.Num):
            if not math.isfinite(index.value) or index.value != int(index.value):
                self.fail(f"an index must be an integer, got {index.value:g}", tree.children[1])
            if not 0 <= index.value < size:
                self.fail(f"index {index.value:g} is out of range for a dim of size {size}", tree.children[1])
            index = ir.Num(float(int(index.value)), index.pos)
        elif isinstance(index, ir.Ref) and index.kind == "loop":
            lo, hi = self.symbols[index.name].extra
            if lo < 0 or hi > size:
                self.fail(f"loop variable '{index.name}' runs over {lo}..{hi}, out of range for a dim of size "
                          f"{size}", tree.children[1])
        else:
            self.fail("an index must be an integer or a loop variable", tree.children[1])
        return ir.Index(base, index, base.shape[1:], _pos(tree))

    def expr_field(self, tree, ctx):
        base, field = tree.children
        if ctx != "monoid":
            self.fail(f"'.{field}' reads a monoid operand's element and is only allowed inside a monoid", tree)
        left, right, elements, name = self.monoid_ctx
        if base.data != "name" or str(base.children[0]) not in (left, right):
            self.fail(f"'.{field}' applies to the monoid's operands {left} and {right} only", tree)
        if str(field) not in elements:
            self.fail(f"'{field}' is not an element of monoid '{name}' (elements: {', '.join(elements)})", field)
        return ir.Field(str(base.children[0]), str(field), _pos(tree))

    def expr_tuple(self, tree, ctx):
        self.fail("a tuple is only allowed as an operand of a monoid combine", tree)
