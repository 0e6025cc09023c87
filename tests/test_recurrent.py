"""The `recurrent` strategy matches the float64 reference: outputs, final states and
the gradients of every input, param and initial state.

Kernels run under TRITON_INTERPRET=1 at small shapes: K = V = 8 in tiles of 4
columns (two programs per sequence and head, so partial sums over tiles are
exercised), checkpoints every 4 steps and T = 13 (not a multiple of 4).

Both register orders of a matrix state's tile (the tile choice ORDER: "VK" holds
S[K, V] as [BV, BK], "KV" as [BK, BV]) run every spec with initial states, varlen
and every gradient; the plain fp32 and bf16 checks run "KV" on a few specs only,
to keep the suite quick.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recc
from recc.check import load as load_spec
from recc.lower.emit import Unsupported
from recc.lower.recurrent import layout_of, lower_recurrent
from recc.render import render_module
from oracle import assert_close_to_reference, random_arguments, random_initial_state

SPECS = Path(__file__).resolve().parent.parent / "specs"
RECURRENT = ["simple_gla", "gla", "retnet", "mamba2", "mlstm", "delta_net", "gated_delta_net", "delta_product",
             "first_order", "softmax_scan"]
SMALL = {"BV": 4, "BV_bwd": 4, "CHUNK": 4}
ORDERS = ["VK", "KV"]
EVERY_ORDER = [(name, order) for order in ORDERS for name in RECURRENT]
SOME_KV = [(name, "VK") for name in RECURRENT] + [(name, "KV") for name in ("gla", "gated_delta_net", "mamba2")]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RECC_CACHE_DIR", str(tmp_path_factory.mktemp("recc_cache")))
    yield
    mp.undo()


def recurrent_op(name: str, reg_steps: int = 3, order: str = "VK", order_bwd: str | None = None):
    """The op with small tiles: V in tiles of 4, a checkpoint every 4 steps, and
    (by default) the backward replaying 3 steps at a time in registers, so
    sub-chunks are ragged too; the state tile held in `order` (the backward's
    in `order_bwd`, by default the same)."""
    tiles = {"REG_STEPS": reg_steps, "ORDER": order, "ORDER_bwd": order_bwd or order}
    op = recc.load(SPECS / f"{name}.rec", strategy="recurrent", tiles=tiles)
    op.module.TILES.update(SMALL)
    return op


def arguments(rec, B=2, T=13, H=2, size=8, dtype=torch.float32, seed=0):
    args = random_arguments(rec, B, T, H, {d: size for d in rec.free_dims}, seed=seed)
    return [a.to(dtype) for a in args]


@pytest.mark.parametrize("name, order", SOME_KV)
def test_matches_reference_fp32(name, order):
    op = recurrent_op(name, order=order)
    rec = op.module._REC
    assert op.module.STRATEGY == "recurrent"
    assert_close_to_reference(op, rec, arguments(rec), tol=1e-4)


@pytest.mark.parametrize("name, order", EVERY_ORDER)
def test_matches_reference_with_initial_state(name, order):
    """Also with the backward walking one step at a time (REG_STEPS = 1)."""
    op = recurrent_op(name, reg_steps=1, order=order)
    rec = op.module._REC
    args = arguments(rec, B=2, T=9, H=1, seed=1)
    errors = assert_close_to_reference(op, rec, args, {"initial_state": random_initial_state(rec, args)}, tol=1e-4)
    assert all(f"dinitial {s.name}" in errors for s in rec.states)


@pytest.mark.parametrize("name, order", EVERY_ORDER)
def test_matches_reference_varlen(name, order):
    """Three packed sequences (lengths 5, 1, 7) with initial states."""
    op = recurrent_op(name, order=order)
    rec = op.module._REC
    args = arguments(rec, B=1, T=13, H=1, seed=2)
    cu = torch.tensor([0, 5, 6, 13], dtype=torch.int32)
    init = random_initial_state(rec, args, N=3)
    assert_close_to_reference(op, rec, args, {"cu_seqlens": cu, "initial_state": init}, tol=1e-4)


@pytest.mark.parametrize("name, order", SOME_KV)
def test_matches_reference_bf16(name, order):
    op = recurrent_op(name, order=order)
    rec = op.module._REC
    args = arguments(rec, B=1, T=11, H=2, dtype=torch.bfloat16, seed=3)
    assert_close_to_reference(op, rec, args, tol=2e-2)


@pytest.mark.parametrize("order", ORDERS)
def test_empty_sequence_keeps_its_initial_state(order):
    op = recurrent_op("gated_delta_net", order=order)
    rec = op.module._REC
    args = arguments(rec, B=1, T=8, H=1, seed=4)
    cu = torch.tensor([0, 3, 3, 8], dtype=torch.int64)
    init = random_initial_state(rec, args, N=3)
    assert_close_to_reference(op, rec, args, {"cu_seqlens": cu, "initial_state": init}, tol=1e-4)
    _, final = op(*args, cu_seqlens=cu, initial_state=init, output_final_state=True)
    torch.testing.assert_close(final[1], init[1])


def test_whole_value_dim_in_one_tile():
    """V = 6 with tiles of 8: one program per sequence and head, the tile masked."""
    op = recurrent_op("gla")
    op.module.TILES.update(BV=8, BV_bwd=8)
    try:
        rec = op.module._REC
        args = random_arguments(rec, 2, 6, 1, {"K": 5, "V": 6})
        assert_close_to_reference(op, rec, args, tol=1e-4)
    finally:
        op.module.TILES.update(SMALL)


def test_forward_and_backward_may_tile_the_columns_differently():
    op = recurrent_op("mlstm")
    op.module.TILES.update(BV=8, BV_bwd=2)
    try:
        rec = op.module._REC
        args = arguments(rec, B=2, T=7, H=1, seed=6)
        assert_close_to_reference(op, rec, args, {"initial_state": random_initial_state(rec, args)}, tol=1e-4)
    finally:
        op.module.TILES.update(SMALL)


@pytest.mark.parametrize("name", ["gla", "gated_delta_net", "mlstm"])
@pytest.mark.parametrize("order, order_bwd", [("KV", "VK"), ("VK", "KV")])
def test_forward_and_backward_may_hold_the_tile_in_different_orders(name, order, order_bwd):
    """The backward reads the forward's checkpoints across, whatever the two orders
    (and column tiles: 8 forward, 4 backward)."""
    op = recurrent_op(name, order=order, order_bwd=order_bwd)
    op.module.TILES.update(BV=8, BV_bwd=4)
    try:
        rec = op.module._REC
        args = arguments(rec, B=1, T=13, H=1, seed=7)
        cu = torch.tensor([0, 6, 13], dtype=torch.int32)
        init = random_initial_state(rec, args, N=2)
        assert_close_to_reference(op, rec, args, {"cu_seqlens": cu, "initial_state": init}, tol=1e-4)
    finally:
        op.module.TILES.update(SMALL)


def test_the_register_order_is_a_tile_choice():
    """KV: S[K, V] held [BK, BV], as the op sees it (no transposes on the host);
    VK: held [BV, BK], the host transposes the states in and out."""
    rec = load_spec(SPECS / "gla.rec")
    kv = lower_recurrent(rec, {"ORDER": "KV", "ORDER_bwd": "KV"})
    assert "state tile [BK, BV] (V last" in kv.why
    assert "b_k[:, None] * b_v[None, :]" in kv.source and "tl.full([BK, BV]" in kv.source
    assert "_held(" not in kv.source and "_public(" not in kv.source
    vk = lower_recurrent(rec, {"ORDER": "VK", "ORDER_bwd": "VK"})
    assert "state tile [BV, BK] (K last" in vk.why
    assert "b_k[None, :] * b_v[:, None]" in vk.source and "_held(initial.get('S'))" in vk.source
    mixed = lower_recurrent(rec, {"ORDER": "KV", "ORDER_bwd": "VK"})
    assert "state tile [BK, BV] (V last: a warp's lanes run along V) in the forward, [BV, BK]" in mixed.why
    assert (mixed.tiles["ORDER"], mixed.tiles["ORDER_bwd"]) == ("KV", "VK")
    assert "ORDER, ORDER_bwd = \"KV\", \"VK\"" in mixed.source
    assert "ORDER=KV, ORDER_bwd=KV" in render_module(rec, "recurrent", {"ORDER": "KV", "ORDER_bwd": "KV"})
    with pytest.raises(ValueError, match="ORDER must be one of 'VK', 'KV', not 'kv'"):
        lower_recurrent(rec, {"ORDER": "kv"})


def test_layout_rows_are_the_key_dim_and_columns_the_value_dim():
    layout = layout_of(load_spec(SPECS / "mamba2.rec"))
    assert (layout.row, layout.col) == ("N", "P")
    layout = layout_of(load_spec(SPECS / "first_order.rec"))
    assert (layout.row, layout.col) == (None, "D")


@pytest.mark.parametrize("name", ["lstm", "gru", "slstm"])
def test_cells_with_a_recurrent_matrix_are_refused_with_a_reason(name):
    with pytest.raises(Unsupported, match=r"R\[.*\] is a square matrix over D .*cell strategy"):
        lower_recurrent(load_spec(SPECS / f"{name}.rec"))


@pytest.mark.parametrize("order", ORDERS)
def test_a_step_that_sums_over_the_value_dim_runs_in_one_tile(tmp_path, order):
    spec = tmp_path / "normed.rec"
    spec.write_text("""recurrence normed
  dims   K, V
  input  k[K], v[V]
  state  S[K, V]
  S = S + outer(k, v) / sum(v * v)
  output o[V] = S^T @ k
""")
    rec = load_spec(spec)
    lowered = lower_recurrent(rec, {"ORDER": order, "ORDER_bwd": order})
    assert lowered.tiles["BV"] == "whole"
    assert "V whole (a step sums over it, so it cannot be split)" in lowered.why
    op = recc.load(spec, strategy="recurrent", tiles={"ORDER": order, "ORDER_bwd": order})
    op.module.TILES.update(SMALL)
    assert_close_to_reference(op, rec, arguments(rec, T=7), tol=1e-4)
