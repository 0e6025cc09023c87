"""Independent float64 loops for every example spec, written from the papers'
equations with plain PyTorch (no recc import). They are the second opinion
the reference evaluator is tested against in tests/test_reference.py.

Each op follows the generated ops' calling convention:

    out, final_state = op(*inputs, *params, scale=None, initial_state=None,
                          output_final_state=False, cu_seqlens=None)

inputs `[B, T, H, ...]`, params `[H, ...]`, states `[N, H, ...]` (a tuple in
declaration order when there are several). Each spec is written as one loop
over the time steps of a single sequence (values `[H, ...]`, heads batched);
`_over_sequences` runs it over batch rows or over the packed sequences of
`cu_seqlens`.
"""
import torch
import torch.nn.functional as F


def _over_sequences(loop, inputs, params, fresh, initial_state, output_final_state, cu_seqlens):
    """Run `loop(xs, params, states) -> (out [T, H, ...], states)` once per sequence.

    xs: the inputs of one sequence, each [T, H, ...]; states: a tuple of [H, ...].
    fresh: the tuple of [H, ...] states a new sequence starts from."""
    B, T = inputs[0].shape[:2]
    if cu_seqlens is None:
        spans = [(b, 0, T) for b in range(B)]
    else:
        bounds = [int(x) for x in cu_seqlens]
        spans = [(0, s, e) for s, e in zip(bounds[:-1], bounds[1:])]
    if initial_state is not None and isinstance(initial_state, torch.Tensor):
        initial_state = (initial_state,)
    outs, finals = [], []
    for n, (b, start, end) in enumerate(spans):
        states = tuple(s[n] for s in initial_state) if initial_state is not None else fresh
        out, states = loop([x[b, start:end] for x in inputs], params, states)
        outs.append((b, start, end, out))
        finals.append(states)
    out_shape = (B, T) + outs[0][3].shape[1:]
    result = torch.zeros(out_shape, dtype=torch.float64)
    for b, start, end, out in outs:
        result[b, start:end] = out
    if not output_final_state:
        return result, None
    final = tuple(torch.stack([f[i] for f in finals]) for i in range(len(fresh)))
    return result, final[0] if len(final) == 1 else final


def _zeros(*shape):
    return torch.zeros(shape, dtype=torch.float64)


# ---- linear attention family: state S[K, V] per head ------------------------------

def delta_net(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Delta rule (Schlag et al. 2021): v_old = S^T k; S += beta k (v - v_old)^T; o = S^T q * scale."""
    H, K, V = q.shape[2], q.shape[-1], v.shape[-1]
    scale = K ** -0.5 if scale is None else scale

    def loop(xs, params, states):
        (S,), out = states, []
        q, k, v, beta = xs
        for t in range(q.shape[0]):
            v_old = torch.einsum("hkv,hk->hv", S, k[t])
            S = S + beta[t][:, None, None] * torch.einsum("hk,hv->hkv", k[t], v[t] - v_old)
            out.append(torch.einsum("hkv,hk->hv", S, q[t]) * scale)
        return torch.stack(out), (S,)

    return _over_sequences(loop, (q, k, v, beta), (), (_zeros(H, K, V),), initial_state, output_final_state,
                           cu_seqlens)


def gated_delta_net(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                    cu_seqlens=None):
    """Gated delta rule (Yang et al. 2024): S = alpha S; S += beta k (v - S^T k)^T, alpha = exp(g)."""
    H, K, V = q.shape[2], q.shape[-1], v.shape[-1]
    scale = K ** -0.5 if scale is None else scale

    def loop(xs, params, states):
        (S,), out = states, []
        q, k, v, g, beta = xs
        for t in range(q.shape[0]):
            S = torch.exp(g[t])[:, None, None] * S
            v_old = torch.einsum("hkv,hk->hv", S, k[t])
            S = S + beta[t][:, None, None] * torch.einsum("hk,hv->hkv", k[t], v[t] - v_old)
            out.append(torch.einsum("hkv,hk->hv", S, q[t]) * scale)
        return torch.stack(out), (S,)

    return _over_sequences(loop, (q, k, v, g, beta), (), (_zeros(H, K, V),), initial_state, output_final_state,
                           cu_seqlens)


def delta_product(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
                  cu_seqlens=None):
    """Gated DeltaProduct (Siems et al. 2025): decay once, then n delta-rule steps per token."""
    H, K, V, n = q.shape[2], q.shape[-1], v.shape[-1], k.shape[3]
    scale = K ** -0.5 if scale is None else scale

    def loop(xs, params, states):
        (S,), out = states, []
        q, k, v, g, beta = xs
        for t in range(q.shape[0]):
            S = torch.exp(g[t])[:, None, None] * S
            for j in range(n):
                kj, vj, bj = k[t, :, j], v[t, :, j], beta[t, :, j]
                v_old = torch.einsum("hkv,hk->hv", S, kj)
                S = S + bj[:, None, None] * torch.einsum("hk,hv->hkv", kj, vj - v_old)
            out.append(torch.einsum("hkv,hk->hv", S, q[t]) * scale)
        return torch.stack(out), (S,)

    return _over_sequences(loop, (q, k, v, g, beta), (), (_zeros(H, K, V),), initial_state, output_final_state,
                           cu_seqlens)


def gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """GLA (Yang et al. 2024): S = exp(g)[:, None] * S + k v^T, a decay per key channel."""
    H, K, V = q.shape[2], q.shape[-1], v.shape[-1]
    scale = K ** -0.5 if scale is None else scale

    def loop(xs, params, states):
        (S,), out = states, []
        q, k, v, g = xs
        for t in range(q.shape[0]):
            S = torch.exp(g[t])[:, :, None] * S + k[t][:, :, None] * v[t][:, None, :]
            out.append((S * q[t][:, :, None]).sum(1) * scale)
        return torch.stack(out), (S,)

    return _over_sequences(loop, (q, k, v, g), (), (_zeros(H, K, V),), initial_state, output_final_state, cu_seqlens)


def simple_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Simple GLA: S = exp(g) S + k v^T, one decay per head and step."""
    H, K, V = q.shape[2], q.shape[-1], v.shape[-1]
    scale = K ** -0.5 if scale is None else scale

    def loop(xs, params, states):
        (S,), out = states, []
        q, k, v, g = xs
        for t in range(q.shape[0]):
            S = torch.exp(g[t])[:, None, None] * S + k[t][:, :, None] * v[t][:, None, :]
            out.append((S * q[t][:, :, None]).sum(1) * scale)
        return torch.stack(out), (S,)

    return _over_sequences(loop, (q, k, v, g), (), (_zeros(H, K, V),), initial_state, output_final_state, cu_seqlens)


def retnet(q, k, v, w, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Retention (Sun et al. 2023): S = gamma S + k v^T with a fixed gamma = exp(w) per head."""
    H, K, V = q.shape[2], q.shape[-1], v.shape[-1]
    scale = K ** -0.5 if scale is None else scale

    def loop(xs, params, states):
        (S,), out = states, []
        q, k, v = xs
        (w,) = params
        gamma = torch.exp(w)
        for t in range(q.shape[0]):
            S = gamma[:, None, None] * S + k[t][:, :, None] * v[t][:, None, :]
            out.append((S * q[t][:, :, None]).sum(1) * scale)
        return torch.stack(out), (S,)

    return _over_sequences(loop, (q, k, v), (w,), (_zeros(H, K, V),), initial_state, output_final_state, cu_seqlens)


def mlstm(q, k, v, i, f, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """mLSTM (Beck et al. 2024) without stabiliser: C = f C + i k v^T, n = f n + i k,
    h = C^T q / max(|n^T q|, 1), with f = sigmoid, i = exp and the query scaled."""
    H, K, V = q.shape[2], q.shape[-1], v.shape[-1]
    scale = K ** -0.5 if scale is None else scale

    def loop(xs, params, states):
        (C, nrm), out = states, []
        q, k, v, i, f = xs
        for t in range(q.shape[0]):
            fg, ig = torch.sigmoid(f[t]), torch.exp(i[t])
            C = fg[:, None, None] * C + ig[:, None, None] * torch.einsum("hk,hv->hkv", k[t], v[t])
            nrm = fg[:, None] * nrm + ig[:, None] * k[t]
            qs = q[t] * scale
            denom = torch.clamp((nrm * qs).sum(-1).abs(), min=1.0)
            out.append(torch.einsum("hkv,hk->hv", C, qs) / denom[:, None])
        return torch.stack(out), (C, nrm)

    return _over_sequences(loop, (q, k, v, i, f), (), (_zeros(H, K, V), _zeros(H, K)), initial_state,
                           output_final_state, cu_seqlens)


def mamba2(x, Bm, Cm, dt, A_log, dt_bias, D, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Mamba-2 SSD (Dao & Gu 2024): delta = softplus(dt + dt_bias), A = -exp(A_log),
    h = exp(delta A) h + delta B x^T, y = h^T C + D x."""
    H, N, P = x.shape[2], Bm.shape[-1], x.shape[-1]

    def loop(xs, params, states):
        (h,), out = states, []
        x, Bm, Cm, dt = xs
        A_log, dt_bias, D = params
        A = -torch.exp(A_log)
        for t in range(x.shape[0]):
            delta = F.softplus(dt[t] + dt_bias)
            h = torch.exp(delta * A)[:, None, None] * h + delta[:, None, None] * Bm[t][:, :, None] * x[t][:, None, :]
            out.append(torch.einsum("hnp,hn->hp", h, Cm[t]) + D[:, None] * x[t])
        return torch.stack(out), (h,)

    return _over_sequences(loop, (x, Bm, Cm, dt), (A_log, dt_bias, D), (_zeros(H, N, P),), initial_state,
                           output_final_state, cu_seqlens)


# ---- elementwise and scan ---------------------------------------------------------------

def first_order(a, b, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    """x_t = a_t * x_{t-1} + b_t (Martin & Cundy 2018)."""
    H, D = a.shape[2], a.shape[-1]

    def loop(xs, params, states):
        (x,), out = states, []
        a, b = xs
        for t in range(a.shape[0]):
            x = a[t] * x + b[t]
            out.append(x)
        return torch.stack(out), (x,)

    return _over_sequences(loop, (a, b), (), (_zeros(H, D),), initial_state, output_final_state, cu_seqlens)


def softmax_scan(x, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Online softmax normaliser (Milakov & Gimelshein 2018): running max m and
    sum s = sum_i exp(x_i - m); y = m + log(s) is the running log-sum-exp."""
    H, D = x.shape[2], x.shape[-1]

    def loop(xs, params, states):
        (m, s), out = states, []
        (x,) = xs
        for t in range(x.shape[0]):
            m_new = torch.maximum(m, x[t])
            s = s * torch.exp(m - m_new) + torch.exp(x[t] - m_new)
            m = m_new
            out.append(m + torch.log(s))
        return torch.stack(out), (m, s)

    fresh = (torch.full((H, D), -torch.inf, dtype=torch.float64), _zeros(H, D))
    return _over_sequences(loop, (x,), (), fresh, initial_state, output_final_state, cu_seqlens)


# ---- nonlinear cells with a head-wise recurrent matrix ------------------------------------

def _recurrent(R, h):
    """R h for every gate: R [H, G, D, D], h [H, D] -> [H, G, D]."""
    return torch.einsum("hgij,hj->hgi", R, h)


def lstm(x, R, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    """LSTM (Hochreiter & Schmidhuber 1997), gates in order input, forget, cell, output:
    c = f c + i z, h = o tanh(c)."""
    H, D = x.shape[2], x.shape[-1]

    def loop(xs, params, states):
        (h, c), out = states, []
        (x,) = xs
        (R,) = params
        for t in range(x.shape[0]):
            pre = x[t] + _recurrent(R, h)
            i, f, z, o = torch.sigmoid(pre[:, 0]), torch.sigmoid(pre[:, 1]), torch.tanh(pre[:, 2]), \
                torch.sigmoid(pre[:, 3])
            c = f * c + i * z
            h = o * torch.tanh(c)
            out.append(h)
        return torch.stack(out), (h, c)

    return _over_sequences(loop, (x,), (R,), (_zeros(H, D), _zeros(H, D)), initial_state, output_final_state,
                           cu_seqlens)


def gru(x, R, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    """GRU (Cho et al. 2014), cuDNN variant: r and u from x + R h; the candidate
    applies r after the recurrent product; h = (1 - u) cand + u h."""
    H, D = x.shape[2], x.shape[-1]

    def loop(xs, params, states):
        (h,), out = states, []
        (x,) = xs
        (R,) = params
        for t in range(x.shape[0]):
            Rh = _recurrent(R, h)
            r = torch.sigmoid(x[t, :, 0] + Rh[:, 0])
            u = torch.sigmoid(x[t, :, 1] + Rh[:, 1])
            cand = torch.tanh(x[t, :, 2] + r * Rh[:, 2])
            h = (1 - u) * cand + u * h
            out.append(h)
        return torch.stack(out), (h,)

    return _over_sequences(loop, (x,), (R,), (_zeros(H, D),), initial_state, output_final_state, cu_seqlens)


def slstm(x, R, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    """sLSTM (Beck et al. 2024) with the max-state stabiliser, gates z, i, f, o:
    m' = max(log f + m, i~); i = exp(i~ - m'); f = exp(log f + m - m');
    c = f c + i tanh(z~); n = f n + i; h = sigmoid(o~) c / n."""
    H, D = x.shape[2], x.shape[-1]

    def loop(xs, params, states):
        (c, n, h, m), out = states, []
        (x,) = xs
        (R,) = params
        for t in range(x.shape[0]):
            pre = x[t] + _recurrent(R, h)
            z_, i_, f_, o_ = pre.unbind(1)
            log_f = F.logsigmoid(f_)
            m_new = torch.maximum(log_f + m, i_)
            i = torch.exp(i_ - m_new)
            f = torch.exp(log_f + m - m_new)
            c = f * c + i * torch.tanh(z_)
            n = f * n + i
            h = torch.sigmoid(o_) * c / n
            m = m_new
            out.append(h)
        return torch.stack(out), (c, n, h, m)

    return _over_sequences(loop, (x,), (R,), tuple(_zeros(H, D) for _ in range(4)), initial_state,
                           output_final_state, cu_seqlens)


OPS = {f.__name__: f for f in [delta_net, gated_delta_net, delta_product, gla, simple_gla, retnet, mlstm, mamba2,
                               first_order, softmax_scan, lstm, gru, slstm]}
