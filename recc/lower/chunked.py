"""Strategy `chunked`: matrix states with affine updates, in the chunkwise-parallel form.

One family of recurrences is recognised here from the IR: a matrix state S[K, V]
updated, per step, by a chain of substeps

    S = a_j * [householder(k_j, beta_j) @] S + c_j * outer(k_j, v_j)      j = 0 .. n-1

(a_j a scalar decay `exp(.)`, `sigmoid(.)`, a positive number, ... or a per-key
`diag(exp(.))`; c_j a scalar coefficient; DeltaProduct's `for` loop gives n > 1; a pure
decay step `S = exp(g) * S` folds into the next substep), an optional normaliser state
n[K] updated like S with v = 1 (mLSTM), and one output that reads the state through a query,

    o = S^T @ q * scale [/ max(abs(dot(n, q) * scale), floor)] [+ terms free of the state].

`chunked_form` turns the IR into `ChunkedForm`, plain facts (or `NotChunked` naming the
part that does not fit). Everything per step (log-decays, coefficients, betas, the
query/key/value vectors, scalar factors of the query, state-free output terms) stays an
IR expression, which `_PerStep` emits as PyTorch code (`_per_step` in the generated
source); gradients w.r.t. inputs and params flow back through that code by
torch.autograd, from the kernels' gradients w.r.t. the per-step tensors. `_layout` (from
`_roles`) hands the values to the kernels in their layouts and copies only what is not
there already: an input is passed in place (DeltaProduct's k[n, K], v[n, V], beta[n] are
the kernels' substep rows as they are), scalars and log-decays in their own type (the kernels
load them as fp32, and store their gradients in it where one kernel writes them whole).
The kernels are
a fixed set of templates (`templates/chunked_*.jinja`) specialised on the facts

    decay: none | scalar | key        transition: plain | householder (n substeps)
    coeff: none | plain | log         normaliser: yes (stabilised, mLSTM) | no

so a new spec of the family needs no new code (tests/test_chunked.py has three).

Kernels (BT = chunk length in substeps, from the solver per call with every kernel's V block,
warps and pipeline stages: `recc.tiles`, templates/chunked.constraints; grids over chunks of all sequences,
or over (sequence, head) for the passes; varlen through cu_seqlens tables):

* `chunk_cumsum`: G = chunk-local cumulative sum of the log-decays (fp32, per substep; the
  log-decays are per token: a decay only comes before a token's first substep).
* householder, `chunk_wy_fwd`: per chunk, A = strictly_lower(diag(beta) K K^T * exp(G_i - G_j)),
  T = (I + A)^-1 exactly: forward substitution in fp32 lane arithmetic inside diagonal blocks
  of BI rows (all blocks at once, no tl.dot; A's rows read back from the chunk's Tm slot),
  then the blocks merged pairwise, BI -> 2 BI -> ... -> BT, by
  inv([[I + A11, 0], [A21, I + A22]]) = [[T1, 0], [-T2 A21 T1, T2]] (two tl.dot's per level);
  W = T (beta exp(G) K), U = T (c V) with fp32 operands.
* `chunk_fwd_h`: per (sequence, head, V block), the state passed over the chunks; stores
  the state at each chunk start (householder: and v_new = U - W h, in the inputs' type).
* per-key decays, `chunk_fwd_A`: per (sub-chunk, chunk), the scores' rows
  A_ij = sum_k q_ik k_jk exp(G_ik - G_jk), j <= i (secondary chunking, below), stored in the
  inputs' type and saved for the backward.
* `chunk_fwd_o`: per (V block, chunk), o = exp(G) q h + (q k^T * exp(G_i - G_j), causal) v
  (per-key decays: A v, A loaded).
* backward: `chunk_bwd_dv` (the intra-chunk dv; householder: its local part; per-key decays:
  A^T do from the saved A, and the V block's part of dA = do v^T), `chunk_bwd_dh`
  (dS passed backward over chunks, stored at each chunk end; householder: adds the state
  part of dv_new, which is kept in the inputs' type: every kernel adds in fp32 and rounds once
  at its store), `chunk_bwd_dqk` per (K block, chunk): dq, dk and that K block's share of
  the log-decay gradient from the cumulative-gate identity dG_i = q_i.dq_i - k_i.dk_i
  (+ the chunk-end term exp(G_last) <S, dS> + sum_j k_j.dk_state_j), reverse-cumsummed;
  pairs (i, j) of one step are kept out of the identity (their terms cancel exactly, and
  in bf16 their rounding would swamp a small dG); householder: `chunk_bwd_wy` back through
  the UT form (dA = -T^T dT T^T) and the sum over K blocks, from dqk's part of dk (left in
  dk) and dW = -dv_new h^T, both in the inputs' type.
  States are stored by the forward (h, in the inputs' type), not recomputed.

exp() is never taken of a positive number: scalar decays only appear as differences
G_i - G_j with i >= j. Per-key decays (GLA) use secondary chunking (the GLA paper, sec. 4):
rows in sub-chunks of BC (16 or 32); a pair of sub-chunks (i, j < i) is one tl.dot whose
factors are both scaled against a reference row r between them, q_i exp(G_i - G_r) and
k_j exp(G_r - G_j) (both exponents <= 0: G decreases along the chunk). A sub-chunk's own
[BC, BC] diagonal block is split the same way around its first row r (`_separable`): one
tl.dot of q_i exp(G_i - G_r) and k_j exp(G_r - G_j), the half above the diagonal masked,
when every |G - G_r| of the block's rows and K block stays within 60 (bf16 and fp32 operands
reach e^88; 8 for fp16, e^11): then neither factor overflows nor underflows and each product
is as exact as the other blocks'. Decays stronger than e^-60 over a sub-chunk take the exact
path instead: per-element exp(G_ik - G_jk), i >= j, a column or row at a time (H200, GLA at
the main shape: chunk_fwd_A 0.454 -> 0.130 ms, chunk_bwd_dqk 1.67 -> 1.05 ms at the same
tiles). No work goes above the diagonal beyond the masked half of the diagonal blocks.
`chunk_fwd_A` takes one sub-chunk's rows (r its first row; a [BC, K] x [K, BC] tl.dot per
earlier sub-chunk, then the diagonal block, zeros above it) and stores A in the inputs'
type, which o and dv load: A costs 2 BT bytes per step and head to store and 4 BT to read
twice, where recomputing it costs BC K exps per step and head in each of o's and dv's V
blocks. The backward's dA = scale do v^T comes out of dv (fp32, one part per V block).
`chunk_bwd_dqk` takes the state parts of dq, dk and dG's chunk-end term for the whole chunk
(one pass over V), then walks the sub-chunks last to first: its rows of the state parts (a
one-hot tl.dot on bf16 parts of them: two, 16 bits; three for fp32 inputs), dq's part from
the earlier sub-chunks (against the sub-chunk's first row) and dk's from the later ones
(against its last row), a [BC, BC] x [BC, K] tl.dot on dA per pair, the diagonal per
element, and dG's reverse cumsum carried from the later sub-chunks.
mLSTM's exp input gates use the max-state stabiliser: states kept as S exp(-m), row
stabilisers m_i, the denominator max(|n.q|, floor exp(-m_i)); the backward passes dS exp(m)
so that it too stays in range, and gives the gradients of the exact function (m is a
constant of it). Its
backward starts with `chunk_bwd_rows`: per row, scale / den and the denominator's gradient
from do.o; the output o is saved by the op's autograd wrapper (`_SAVED_OUTPUTS`), not copied.

Status (CPU interpreter, tests/test_chunked.py): outputs, final states and all gradients
match the float64 reference (fp32 < 1e-4, bf16 < 2e-2) for simple_gla, retnet, mamba2,
gla, mlstm, delta_net, gated_delta_net, delta_product (n = 2) and three specs of the tests
(scalar decay, per-key decay, householder), ragged T and varlen.
Kernels compile for sm_90; GPU timings come from benchmarks/chunked_gpu_check.py.
Offsets: buffers may hold 2**31 elements or more (DeltaProduct at B = 4, T = 32K, H = 16,
K = V = 128 has 2**31 in its chunk states): each program moves its pointers to its own token,
chunk or sequence row once, by an int64 offset (`_at` in templates/chunked_common.jinja; the
passes over a sequence's chunks then bump them by one chunk per step, no int64 arithmetic
beyond that in their loops), and indexes from there in int32, inside one chunk or tile
(tests/test_chunked.py runs every kernel as if its rows sat past 2**31 elements).
Limits: K <= 256 in one tile for the state passes; tokens and substeps are counted in int32
(cu_seqlens and the chunk tables, a sequence's substeps: the host refuses B*T*n >= 2**31);
most kernels over chunks have them on grid axis 1, which CUDA caps at 65535 (not checked:
launches fail from about 65536 * BT / n tokens on); per-key decays with householder transitions,
decays inside later substeps, and states read before their update are not of this family
(`NotChunked`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import jinja2

from .. import ir
from ..errors import ReccError
from ..resources import templates_dir
from ..tiles import described, launch_shape, reference_tiles, spec_key
from . import Lowered, literal


class NotChunked(Exception):
    """The recurrence is not of the chunked family; the message says which part."""


# ---- facts ---------------------------------------------------------------------

@dataclass(frozen=True)
class Substep:
    """S = exp(decay) * [householder(key, beta) @] S + coeff * outer(key, value)."""
    decay: ir.Expr | None          # log of the decay: scalar, or [K] for a per-key decay
    beta: ir.Expr | None           # householder strength (scalar), None: plain transition
    coeff: ir.Expr | None          # coefficient of outer(key, value); None: 1
    key: ir.Expr                   # [K]
    value: ir.Expr                 # [V]


@dataclass(frozen=True)
class ChunkedForm:
    state: str
    K: str                         # dim names of the state
    V: str
    substeps: tuple                # Substep, n of them per step
    decay: str                     # "none" | "scalar" | "key"
    householder: bool
    coeff: str                     # "none" | "plain" | "log"
    normaliser: str | None         # name of the [K] normaliser state
    output: str
    query: ir.Expr                 # [K] (per-step factors folded in)
    scale: ir.Expr                 # const-only factor of S^T @ q
    floor: ir.Expr | None          # const-only floor of the normaliser's denominator
    extra: ir.Expr | None          # state-free additive term of the output


# ---- expression helpers -------------------------------------------------------

def _refs_state(e: ir.Expr) -> bool:
    return any(isinstance(x, ir.Ref) and x.kind == "state" for x in ir.walk(e))


def _const_only(e: ir.Expr) -> bool:
    return all(not isinstance(x, ir.Ref) or x.kind in ("const", "dim") for x in ir.walk(e))


def _inline(e: ir.Expr, lets: dict) -> ir.Expr:
    if isinstance(e, ir.Ref) and e.kind == "let":
        return lets[e.name]
    if isinstance(e, ir.Call):
        return replace(e, args=tuple(_inline(a, lets) for a in e.args))
    if isinstance(e, ir.Binary):
        return replace(e, lhs=_inline(e.lhs, lets), rhs=_inline(e.rhs, lets))
    if isinstance(e, ir.Unary):
        return replace(e, operand=_inline(e.operand, lets))
    if isinstance(e, ir.Index):
        return replace(e, base=_inline(e.base, lets))
    return e


def _binary(op: str, a: ir.Expr | None, b: ir.Expr | None) -> ir.Expr | None:
    """a op b, where a missing side (None) is the operation's identity."""
    if a is None:
        return b
    if b is None:
        return a
    shape = a.shape if len(a.shape) >= len(b.shape) else b.shape
    return ir.Binary(op, a, b, shape)


def _mul(a: ir.Expr | None, b: ir.Expr | None) -> ir.Expr | None:
    return _binary("*", a, b)


def _add(a: ir.Expr | None, b: ir.Expr | None) -> ir.Expr | None:
    return _binary("+", a, b)


def _neg(a: ir.Expr) -> ir.Expr:
    if isinstance(a, ir.Num):
        return ir.Num(-a.value)
    return ir.Unary("-", a, a.shape)


def _terms(e: ir.Expr, sign: int = 1):
    """Additive terms of e: [(sign, term)]."""
    if isinstance(e, ir.Binary) and e.op in "+-":
        return _terms(e.lhs, sign) + _terms(e.rhs, sign if e.op == "+" else -sign)
    if isinstance(e, ir.Unary) and e.op == "-":
        return _terms(e.operand, -sign)
    return [(sign, e)]


def _factors(e: ir.Expr):
    """Multiplicative factors of e (through `*`, and `@` when a side is a scalar)."""
    if isinstance(e, ir.Binary) and e.op == "*":
        return _factors(e.lhs) + _factors(e.rhs)
    if isinstance(e, ir.Unary) and e.op == "-":
        return [ir.Num(-1.0)] + _factors(e.operand)
    return [e]


def _product(factors) -> ir.Expr | None:
    out = None
    for f in factors:
        out = _mul(out, f)
    return out


def _log_of(decay: ir.Expr, what: str) -> ir.Expr:
    """The log of a (scalar or vector) decay factor, as an expression."""
    if isinstance(decay, ir.Call) and decay.fn == "exp":
        return decay.args[0]
    if isinstance(decay, ir.Call) and decay.fn == "sigmoid":
        return ir.Call("logsigmoid", decay.args, decay.shape)
    if isinstance(decay, ir.Num):
        if decay.value <= 0:
            raise NotChunked(f"{what}: a decay factor {decay.value} <= 0 has no log")
        return ir.Num(math.log(decay.value))
    return ir.Call("log", (decay,), decay.shape)


# ---- the matcher ----------------------------------------------------------------

def _parse_update(expr: ir.Expr, state: str, what: str):
    """`a * [M @] state + c * outer(k, v)` -> (decay factors, matrix factors, outer term or None)."""
    with_state = [(s, t) for s, t in _terms(expr) if _refs_state(t)]
    without = [(s, t) for s, t in _terms(expr) if not _refs_state(t)]
    if len(with_state) != 1:
        raise NotChunked(f"{what}: the update must have exactly one term in the state, got {len(with_state)}")
    sign, term = with_state[0]
    scalars, matrices = ([ir.Num(-1.0)] if sign < 0 else []), []
    node = term
    while True:
        if isinstance(node, ir.Ref) and node.kind == "state":
            if node.name != state:
                raise NotChunked(f"{what}: the update of {state} reads state {node.name}")
            break
        if isinstance(node, ir.Binary) and node.op == "@":
            matrices.extend(_matrix_factors(node.lhs, scalars, what))
            node = node.rhs
            continue
        if isinstance(node, ir.Binary) and node.op == "*":
            left, right = node.lhs, node.rhs
            if _refs_state(left):
                left, right = right, left
            if _refs_state(left) or left.shape != ():
                raise NotChunked(f"{what}: the state is multiplied by a non-scalar or state-dependent factor")
            scalars.extend(_factors(left))
            node = right
            continue
        if isinstance(node, ir.Unary) and node.op == "-":
            scalars.append(ir.Num(-1.0))
            node = node.operand
            continue
        raise NotChunked(f"{what}: the state term is not a decay/transition applied to {state}")
    outer = None
    for s, t in without:
        if outer is not None:
            raise NotChunked(f"{what}: more than one input term in the update")
        outer = (s, t)
    return scalars, matrices, outer


def _matrix_factors(m: ir.Expr, scalars: list, what: str):
    """A transition matrix: scalar * householder(..) / diag(..) products. Appends scalar
    factors to `scalars`, returns the matrix factors, outermost first."""
    out = []
    for f in _factors(m):
        if f.shape == ():
            if _refs_state(f):
                raise NotChunked(f"{what}: a decay reads the state")
            scalars.append(f)
        elif isinstance(f, ir.Call) and f.fn in ("householder", "diag"):
            if any(_refs_state(a) for a in f.args):
                raise NotChunked(f"{what}: a transition reads the state")
            out.append(f)
        elif isinstance(f, ir.Binary) and f.op == "@":
            out.extend(_matrix_factors(f.lhs, scalars, what))
            out.extend(_matrix_factors(f.rhs, scalars, what))
        else:
            raise NotChunked(f"{what}: transition factor is not a scalar, diag(..) or householder(..)")
    return out


def _split_outer(sign: int, term: ir.Expr, what: str, vector_only: bool = False):
    """`c * outer(k, v)` -> (coeff or None, k, v); with vector_only, `c * k` -> (coeff, k, None)."""
    coeff = [ir.Num(-1.0)] if sign < 0 else []
    found = None
    for f in _factors(term):
        if f.shape == ():
            coeff.append(f)
        elif not vector_only and isinstance(f, ir.Call) and f.fn == "outer":
            if found is not None:
                raise NotChunked(f"{what}: a product of two outer products")
            found = f.args
        elif vector_only and len(f.shape) == 1 and found is None:
            found = (f, None)
        else:
            raise NotChunked(f"{what}: the input term is not a scalar times outer(k, v)")
    if found is None:
        raise NotChunked(f"{what}: the input term has no outer(k, v)")
    return _product(coeff), found[0], found[1]


def chunked_form(rec: ir.Recurrence) -> ChunkedForm:
    """The chunked-family facts of `rec`, or NotChunked saying why not."""
    if rec.topology != "sequence" or rec.monoids:
        raise NotChunked("only sequence recurrences without combine operators")
    mats = [s for s in rec.states if len(s.shape) == 2]
    vecs = [s for s in rec.states if len(s.shape) == 1]
    if len(mats) != 1 or len(vecs) > 1 or len(rec.states) != len(mats) + len(vecs):
        raise NotChunked("needs one matrix state S[K, V] (and at most one normaliser state n[K])")
    S = mats[0]
    Kd, Vd = S.shape
    if any(st.init != 0.0 for st in rec.states):
        raise NotChunked("states must start at zero")
    if len(rec.outputs) != 1:
        raise NotChunked("needs exactly one output")

    lets, stmts = {}, []
    for st in ir.unrolled(rec.body):
        if isinstance(st, ir.Let):
            lets[st.name] = _inline(st.expr, lets)
        elif isinstance(st, ir.Assign):
            stmts.append(("assign", st.target, _inline(st.expr, lets)))
        elif isinstance(st, ir.Emit):
            stmts.append(("emit", st.output, _inline(st.expr, lets)))
        else:
            raise NotChunked(f"unsupported statement {type(st).__name__}")
    if not stmts or stmts[-1][0] != "emit" or sum(1 for s in stmts if s[0] == "emit") != 1:
        raise NotChunked("the output must be emitted once, after the state updates")

    # substeps of the matrix state; pure decay steps fold into the next substep
    substeps, pending, norm_update = [], None, None
    for kind, target, expr in stmts[:-1]:
        what = f"update of {target}"
        if target != S.name:
            if vecs and target == vecs[0].name and norm_update is None:
                norm_update = expr
                continue
            raise NotChunked(f"{what}: only one normaliser update is supported")
        scalars, matrices, outer = _parse_update(expr, S.name, what)
        decay = None
        for f in scalars:
            decay = _add(decay, _log_of(f, what))
        beta = None
        for m in matrices:
            if m.fn == "diag":
                if beta is not None:
                    raise NotChunked(f"{what}: a per-key decay with a householder transition")
                decay = _add(decay, _log_of(m.args[0], what))
            else:
                if beta is not None:
                    raise NotChunked(f"{what}: two householder factors in one assignment (use a for loop)")
                if any(len(x.shape) == 1 for x in ([decay] if decay is not None else [])):
                    raise NotChunked(f"{what}: a per-key decay with a householder transition")
                beta = m
        if pending is not None:
            decay = _add(pending, decay)
            pending = None
        if outer is None:
            if beta is not None:
                raise NotChunked(f"{what}: a householder step without an input term")
            pending = decay
            continue
        coeff, key, value = _split_outer(*outer, what)
        if beta is not None:
            if beta.args[0] != key:
                raise NotChunked(f"{what}: the householder key differs from the outer product's key")
            beta = beta.args[1]
        substeps.append(Substep(decay, beta, coeff, key, value))
    if pending is not None:
        raise NotChunked("a decay after the last input term of the step")
    if not substeps:
        raise NotChunked(f"no update of {S.name}")

    decays = [s.decay for s in substeps if s.decay is not None]
    if any(len(d.shape) == 1 for d in decays):
        if len(substeps) > 1:
            raise NotChunked("a per-key decay with several substeps")
        decay_kind = "key"
    else:
        decay_kind = "scalar" if decays else "none"
    hh = [s.beta is not None for s in substeps]
    if any(hh) and not all(hh):
        raise NotChunked("householder and plain substeps mixed in one step")
    householder = all(hh)
    if householder and decay_kind == "key":
        raise NotChunked("a per-key decay with a householder transition")
    if any(s.decay is not None for s in substeps[1:]):
        raise NotChunked("a decay inside a later substep")
    coeffs = [s.coeff for s in substeps if s.coeff is not None]
    coeff_kind = "plain" if coeffs else "none"

    # the output
    _, name, expr = stmts[-1]
    normaliser = vecs[0].name if vecs else None
    reads, extras = [], None
    for sign, t in _terms(expr):
        if _refs_state(t):
            reads.append((sign, t))
        else:
            extras = _add(extras, t if sign > 0 else _neg(t))
    if len(reads) != 1:
        raise NotChunked("the output must read the state in exactly one term")
    sign, term = reads[0]
    floor, den_query = None, None
    if isinstance(term, ir.Binary) and term.op == "/" and _refs_state(term.rhs):
        den = term.rhs
        if not (isinstance(den, ir.Call) and den.fn == "max" and len(den.args) == 2):
            raise NotChunked("a state-dependent denominator must be max(abs(dot(n, q) * scale), floor)")
        inner, floor = den.args
        if _refs_state(floor) or not _const_only(floor):
            inner, floor = floor, inner
        if not (isinstance(inner, ir.Call) and inner.fn == "abs") or not _const_only(floor):
            raise NotChunked("a state-dependent denominator must be max(abs(dot(n, q) * scale), floor)")
        den_query = _read_query(inner.args[0], normaliser, "dot")
        term = term.lhs
    query = _read_query(term, S.name, "matvec")
    if normaliser is not None:
        if den_query is None or norm_update is None:
            raise NotChunked("a normaliser state must be updated and read as the output's denominator")
        if den_query != query:
            raise NotChunked("the denominator must read the normaliser with the numerator's query and scale")
        _check_normaliser(norm_update, normaliser, substeps)
        coeff_kind = "log"
    elif den_query is not None:
        raise NotChunked("a denominator reading the state needs a normaliser state")
    const_factor, per_step, q = query
    if sign < 0:
        const_factor = const_factor + [ir.Num(-1.0)]
    scale = _product(const_factor) if const_factor else ir.Num(1.0)
    return ChunkedForm(S.name, Kd, Vd, tuple(substeps), decay_kind, householder, coeff_kind, normaliser,
                       name, _mul(per_step, q) if per_step is not None else q, scale,
                       floor, extras)


def _read_query(term: ir.Expr, state: str, how: str):
    """A state read `S^T @ q * f` (how="matvec") or `dot(n, q) * f` (how="dot"):
    (const factors, per-step scalar factor or None, query vector)."""
    consts, per_step, read = [], None, None
    for f in _factors(term):
        if _refs_state(f):
            if read is not None:
                raise NotChunked("the output reads the state twice in one term")
            read = f
        elif _const_only(f):
            consts.append(f)
        elif f.shape == ():
            per_step = _mul(per_step, f)
        else:
            raise NotChunked("the state read is multiplied by a vector")
    if how == "matvec":
        ok = (isinstance(read, ir.Binary) and read.op == "@" and isinstance(read.lhs, ir.Unary)
              and read.lhs.op == "T" and isinstance(read.lhs.operand, ir.Ref) and read.lhs.operand.name == state
              and not _refs_state(read.rhs))
        if not ok:
            raise NotChunked(f"the output must read the state as {state}^T @ q")
        q = read.rhs
    else:
        ok = isinstance(read, ir.Call) and read.fn == "dot"
        args = read.args if ok else ()
        if ok and isinstance(args[1], ir.Ref) and args[1].name == state:
            args = (args[1], args[0])
        if not (ok and isinstance(args[0], ir.Ref) and args[0].name == state and not _refs_state(args[1])):
            raise NotChunked(f"the denominator must read the normaliser as dot({state}, q)")
        q = args[1]
    q_factors = [f for f in _factors(q) if f.shape == () and _const_only(f)]
    if q_factors:  # S^T @ (q * scale)
        consts += q_factors
        q = _product([f for f in _factors(q) if not (f.shape == () and _const_only(f))])
    return consts, per_step, q


def _check_normaliser(expr: ir.Expr, n: str, substeps: tuple):
    scalars, matrices, outer = _parse_update(expr, n, f"update of {n}")
    if matrices or outer is None or len(substeps) != 1:
        raise NotChunked(f"the normaliser {n} must be updated as a * {n} + c * k")
    sub = substeps[0]
    if sub.beta is not None or (sub.decay is not None and len(sub.decay.shape) == 1):
        raise NotChunked("a normaliser needs a scalar decay and a plain transition")
    decay = None
    for f in scalars:
        decay = _add(decay, _log_of(f, f"update of {n}"))
    coeff, key, _ = _split_outer(*outer, f"update of {n}", vector_only=True)
    if decay != sub.decay or coeff != sub.coeff or key != sub.key:
        raise NotChunked(f"the normaliser {n} must share the matrix state's decay, coefficient and key")
    if not (isinstance(sub.coeff, ir.Call) and sub.coeff.fn == "exp"):
        raise NotChunked("a normaliser is supported with an exp(.) input gate")


# ---- per-step values as PyTorch code ---------------------------------------------

_TORCH_UNARY = {
    "exp": "torch.exp({})", "log": "torch.log({})", "sigmoid": "torch.sigmoid({})",
    "logsigmoid": "torch.nn.functional.logsigmoid({})", "tanh": "torch.tanh({})",
    "softplus": "torch.nn.functional.softplus({})", "relu": "torch.relu({})",
    "silu": "torch.nn.functional.silu({})", "sqrt": "torch.sqrt({})", "abs": "torch.abs({})",
    "step": "({0} > 0).to({0}.dtype)",
}
_TORCH_BINARY = {"max": "torch.maximum({}, {})", "min": "torch.minimum({}, {})"}


class _PerStep:
    """Emit the per-step expressions of a ChunkedForm as the body of a PyTorch function
    `_per_step(x, p, c, d)`: x inputs [B, T, H, ...], p params [H, ...], c consts, d dims.
    Values are computed in float32; a lone input reference (or x[j] of one) is passed through
    as is (a view).
    Common subexpressions are computed once."""

    def __init__(self):
        self.lines = []
        self.memo = {}

    def value(self, e: ir.Expr) -> str:
        if isinstance(e, ir.Ref) and e.kind == "input":
            return f'x["{e.name}"]'
        if self._input_part(e):  # a view of an input, in its type
            return f'x["{e.base.name}"].select({-len(e.base.shape)}, {int(e.index.value)})'
        return self._fp32(e)

    @staticmethod
    def _input_part(e: ir.Expr) -> bool:
        """e is x[j] of an input x (j a number)."""
        return (isinstance(e, ir.Index) and isinstance(e.index, ir.Num) and isinstance(e.base, ir.Ref)
                and e.base.kind == "input")

    def _fp32(self, e: ir.Expr) -> str:
        if e in self.memo:
            return self.memo[e]
        code = self._code(e)
        if not _const_only(e):  # a tensor: computed once into a temporary
            name = f"t{len(self.lines)}"
            self.lines.append(f"{name} = {code}")
            code = name
        self.memo[e] = code
        return code

    def _lifted(self, e: ir.Expr, rank: int) -> str:
        """e's value with unit axes appended up to `rank` value dims (constants are plain floats)."""
        code = self._fp32(e)
        if _const_only(e) or len(e.shape) >= rank:
            return code
        return code + "[" + ", ".join(["..."] + ["None"] * (rank - len(e.shape))) + "]"

    def _code(self, e: ir.Expr) -> str:
        if isinstance(e, ir.Num):
            return repr(float(e.value))
        if isinstance(e, ir.Ref):
            if e.kind == "input":
                return f'x["{e.name}"].float()'
            if e.kind == "param":
                return f'p["{e.name}"].float()'
            if e.kind == "const":
                return f'c["{e.name}"]'
            if e.kind == "dim":
                return f'float(d["{e.name}"])'
            raise NotChunked(f"cannot compute '{e.name}' ({e.kind}) per step")
        if isinstance(e, ir.Unary):
            if e.op != "-":
                raise NotChunked("a transpose in a per-step value")
            return f"(-{self._fp32(e.operand)})"
        if isinstance(e, ir.Binary):
            if e.op == "@":
                raise NotChunked("a matrix product in a per-step value")
            r = max(len(e.lhs.shape), len(e.rhs.shape))
            return f"({self._lifted(e.lhs, r)} {e.op} {self._lifted(e.rhs, r)})"
        if isinstance(e, ir.Index):
            if not isinstance(e.index, ir.Num):
                raise NotChunked("a non-constant index in a per-step value")
            if self._input_part(e):  # only the part in fp32
                return f'x["{e.base.name}"].select({-len(e.base.shape)}, {int(e.index.value)}).float()'
            return f"{self._fp32(e.base)}.select({-len(e.base.shape)}, {int(e.index.value)})"
        if isinstance(e, ir.Call):
            args = [self._fp32(a) for a in e.args]
            if e.fn in _TORCH_UNARY:
                return _TORCH_UNARY[e.fn].format(args[0])
            if e.fn in _TORCH_BINARY:
                r = max(len(a.shape) for a in e.args)
                lifted = [self._lifted(a, r) for a in e.args]
                if any(_const_only(a) for a in e.args):  # torch.maximum needs tensors
                    lifted = [f"torch.as_tensor({c})" if _const_only(a) else c for c, a in zip(lifted, e.args)]
                return _TORCH_BINARY[e.fn].format(*lifted)
            if e.fn == "dot":
                return f"({args[0]} * {args[1]}).sum(-1)"
            if e.fn == "l2norm":
                return f"({args[0]} / {args[0]}.norm(dim=-1, keepdim=True))"
            if e.fn == "sum":
                n = len(e.args[0].shape)
                return f"{args[0]}.sum(dim={tuple(range(-n, 0))})" if n else args[0]
            raise NotChunked(f"{e.fn}(..) in a per-step value")
        raise NotChunked(f"cannot compute {type(e).__name__} per step")


def per_step_source(values: dict, constants: dict | None = None) -> str:
    """`def _per_step(x, p, c, d)` returning {key: tensor} for the named expressions, and
    {key: float} for the named const-only ones."""
    em = _PerStep()
    out = {k: _const_code(e) for k, e in (constants or {}).items() if e is not None}
    out |= {k: em.value(e) for k, e in values.items() if e is not None}
    body = em.lines + ["return {" + ", ".join(f'"{k}": {v}' for k, v in out.items()) + "}"]
    return "def _per_step(x, p, c, d):\n" + "".join(f"    {line}\n" for line in body)


_MATH = {"exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "abs": "abs", "tanh": "math.tanh"}


def _const_code(e: ir.Expr) -> str:
    """A const-only expression as Python arithmetic on floats."""
    if isinstance(e, ir.Num):
        return repr(float(e.value))
    if isinstance(e, ir.Ref):
        return f'c["{e.name}"]' if e.kind == "const" else f'float(d["{e.name}"])'
    if isinstance(e, ir.Unary) and e.op == "-":
        return f"(-{_const_code(e.operand)})"
    if isinstance(e, ir.Binary) and e.op != "@":
        return f"({_const_code(e.lhs)} {e.op} {_const_code(e.rhs)})"
    if isinstance(e, ir.Call) and e.fn in _MATH:
        return f"{_MATH[e.fn]}({_const_code(e.args[0])})"
    if isinstance(e, ir.Call) and e.fn in ("max", "min"):
        return f"{e.fn}({_const_code(e.args[0])}, {_const_code(e.args[1])})"
    raise NotChunked("unsupported function in a constant factor")


def _stacked_input(exprs: list, dims: dict):
    """If exprs are x[0], x[1], ..., x[n-1] of one stacked input x[n, ...], that input's Ref."""
    base = exprs[0].base if isinstance(exprs[0], ir.Index) else None
    if not (isinstance(base, ir.Ref) and base.kind == "input" and base.shape
            and dims.get(base.shape[0], base.shape[0]) == len(exprs)):
        return None
    for j, e in enumerate(exprs):
        if not (isinstance(e, ir.Index) and e.base == base and isinstance(e.index, ir.Num) and e.index.value == j):
            return None
    return base


def _roles(form: ChunkedForm, dims: dict):
    """(named per-step expressions for `_per_step`, lines of `_layout`).

    The layouts are the kernels' (templates/chunked_common.jinja): q a token tensor, k, v, beta, c
    substep tensors, g a token tensor (a decay only comes before a token's first substep).
    Vectors are in the kernels' type `dt`; scalars and log-decays keep theirs (the kernels load
    them as fp32). `_vec` copies only what differs from that: an input already in its layout and
    type is passed as is, and DeltaProduct's k[n, K] is read in place by the substep rows."""
    ns = len(form.substeps)
    values = {"q": form.query}
    lines = ["K, V = dims[_KDIM], dims[_VDIM]",
             'r = {"scale": vals["scale"], "floor": vals.get("floor")}',
             'r["q"] = _vec(vals["q"], (B, T, H, K), dt)']

    def stacked(role, exprs, dim, vector):
        shape1 = f"(B, T, H, {dim})" if vector else "(B, T, H)"
        dtype = ", dt" if role in ("k", "v") else ""
        axis = -2 if vector else -1
        if all(e is None for e in exprs):
            return
        if ns == 1 or role == "g":  # one substep, or the decay (substep 0's)
            values[role] = exprs[0]
            lines.append(f'r["{role}"] = _vec(vals["{role}"], {shape1}{dtype}).unsqueeze({axis})')
            return
        base = _stacked_input(exprs, dims) if all(e is not None for e in exprs) else None
        if base is not None:
            values[role] = base
            shape = f"(B, T, H, {ns}, {dim})" if vector else f"(B, T, H, {ns})"
            lines.append(f'r["{role}"] = _vec(vals["{role}"], {shape}{dtype})')
            return
        parts = []
        for j, e in enumerate(exprs):
            if e is None:  # a substep without a coefficient: 1
                parts.append(f"torch.ones({shape1}, device=vals['q'].device)")
            else:
                values[f"{role}{j}"] = e
                parts.append(f'_as(vals["{role}{j}"], {shape1}{dtype})')
        lines.append(f'r["{role}"] = torch.stack([{", ".join(parts)}], {axis})  # one copy')

    subs = form.substeps
    stacked("k", [s.key for s in subs], "K", True)
    stacked("v", [s.value for s in subs], "V", True)
    stacked("g", [s.decay for s in subs], "K", form.decay == "key")
    stacked("beta", [s.beta for s in subs], None, False)
    if form.coeff == "log":
        stacked("c", [s.coeff.args[0] for s in subs], None, False)
    else:
        stacked("c", [s.coeff for s in subs], None, False)
    if form.extra is not None:
        values["extra"] = form.extra
    lines.append("return r")
    return values, lines


KERNELS = ("wy", "a", "h", "o", "ho", "dv", "dh", "dqk", "wyb")
NO_V_BLOCK = ("a",)   # kernels without a V block: <kernel>_warps, <kernel>_stages only
SHARED = ("BT", "BC", "BI", "BKS", "FUSE")


def chunked_overrides(tiles: dict | None) -> dict:
    """Tile overrides in the host code's names (`_TILES`): BT, BC, BI, BKS, FUSE and <kernel>_BV,
    <kernel>_warps, <kernel>_stages; also accepted: `BV` (every kernel's V block, tests use it)
    and <kernel>: (BV, num_warps, num_stages), or (num_warps, num_stages) for a kernel without
    a V block (`NO_V_BLOCK`)."""
    out = {}
    for key, value in (tiles or {}).items():
        if key == "BV":
            out.update({f"{k}_BV": value for k in KERNELS if k not in NO_V_BLOCK})
        elif key in NO_V_BLOCK:
            warps, stages = value[-2:]
            out.update({f"{key}_warps": warps, f"{key}_stages": stages})
        elif key in KERNELS:
            bv, warps, stages = value
            out.update({f"{key}_BV": bv, f"{key}_warps": warps, f"{key}_stages": stages})
        elif key in SHARED or (key.split("_", 1)[0] in KERNELS and key.split("_", 1)[-1] in ("BV", "warps", "stages")
                               and not (key.split("_", 1)[0] in NO_V_BLOCK and key.endswith("_BV"))):
            out[key] = value
        else:
            raise ReccError(f"unknown chunked tile {key!r}: expected one of {', '.join(SHARED)}, BV, a kernel "
                            f"({', '.join(KERNELS)}) or <kernel>_BV / _warps / _stages")
    return out


def lower_chunked(rec: ir.Recurrence, tiles: dict | None = None) -> Lowered:
    """Lower a recurrence of the chunked family (see the module docstring). The host code takes
    its launch parameters from the solver at each call shape (`recc.tiles.launch_tiles`,
    templates/chunked.constraints); `tiles` overrides them (see `chunked_overrides`)."""
    form = chunked_form(rec)
    if form.decay == "key" and form.coeff == "plain":
        # the per-key kernels take the coefficient folded into the key
        form = replace(form, coeff="none", substeps=tuple(
            replace(s, key=_mul(s.coeff, s.key), coeff=None) for s in form.substeps))
    values, layout = _roles(form, rec.fixed_dims)
    per_step = per_step_source(values, {"scale": form.scale, "floor": form.floor})
    layout_src = ('def _layout(vals, B, T, H, dims, dt):\n'
                  '    """Per-step values in the kernels\' layouts: vectors in dt, scalars in their own type."""\n'
                  + "".join(f"    {line}\n" for line in layout))
    overrides = chunked_overrides(tiles)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    ctx = dict(name=rec.name, decay=form.decay, hh=form.householder, coeff=form.coeff,
               norm=form.normaliser is not None, normaliser=form.normaliser, ns=len(form.substeps),
               extra=form.extra is not None,
               # one kernel stores the scalars' gradients whole (chunk_bwd_wy; the per-key dqk)
               scalar_grads_whole=form.householder or form.decay == "key",
               state=form.state, output=form.output, kdim=form.K, vdim=form.V, tiles=literal(overrides),
               launch_shape=literal(_launch_shape(rec, form)), spec_key=spec_key(rec),
               per_step=per_step, layout=layout_src)
    header = "import math\nimport os\n\nimport torch\nimport triton\nimport triton.language as tl\n\n" \
        "from recc.runtime import cdiv as _cdiv, next_pow2 as _pow2\n" \
        "from recc.tiles import launch_tiles as _launch_tiles\n\n" \
        "# _backward differentiates the per-step expressions with torch.autograd\n_BACKWARD_USES_AUTOGRAD = True\n\n"
    kernels = ("chunked_common.jinja",) + (("chunked_fwd.jinja", "chunked_bwd.jinja") if form.normaliser is None
                                           else ("chunked_norm.jinja",))
    source = header + "\n".join(env.get_template(t).render(**ctx) for t in kernels + ("chunked_host.jinja",))
    example = described(reference_tiles(rec, "chunked"))
    why = (f"matrix state {form.state}[{form.K}, {form.V}] with an affine update: decay {form.decay}, "
           f"{'householder' if form.householder else 'plain'} transition x{len(form.substeps)}, "
           f"coefficient {form.coeff}; chunks and per-kernel tiles from the solver per call (H100, main shape: "
           f"{example})")
    return Lowered("chunked", source, why, {"chosen": "per call (recc.tiles)", **overrides}, traceable=False)


def _launch_shape(rec: ir.Recurrence, form: ChunkedForm) -> dict:
    """The solver's shape keywords for this spec: the analysis' (`recc.tiles.launch_shape`), which
    must agree with the form the kernels were specialised on."""
    shape = launch_shape(rec, "chunked")[1]
    shape.update(substeps=len(form.substeps), householder=form.householder, per_key=form.decay == "key",
                 normaliser=form.normaliser is not None, gated=form.decay != "none")
    return shape
