#!/usr/bin/env bash
# One call of the GPU plan on the device machine (benchmarks/README.md), logs and JSON under $OUT
# (the device tool returns at most 8 files a call: each step writes at most 4).
#
#   bash benchmarks/device_run.sh STEP [STEP ...]
#
#   check        chunked_gpu_check.py: every chunked spec against float64 (batch and varlen), recc timings
#   check-fp32   the same checks on fp32 inputs (tl.dot in tf32x3, torch's default; the EB = 4 tiles)
#   bench-delta  bench.py: DeltaNet, gated DeltaNet, DeltaProduct against fla, T = 1K, 4K, 8K, 32K
#   bench-gla    bench.py: GLA against fla, same T (fla's first autotuning of GLA alone took 253 s)
#   bench-rest   bench.py: simple GLA against fla, mLSTM against mlstm_kernels, same T
#   bench-sgla   bench.py: simple GLA alone (mLSTM's kernels have no inference plan: unchanged by it)
#   bench-32k    bench.py: DeltaProduct at T = 32K alone (the int64 offsets; refused before)
#   decode       decode.py: calls of few steps (T = 1-128, an initial state) of six chunked specs:
#                chunked, recurrent and the per-call choice against fla's fused_recurrent kernels
#                (the measured crossover beside the model's), forward, then forward + backward
#   crash        crash_repro.py: the kernel points that faulted in the sweeps and their neighbours,
#                each in a fresh process (which of BT / BV / warps / stages faults)
#   cold         kernel_times.py: cold start (empty caches, fla autotuning) and per-kernel times of
#                DeltaProduct against fla (issue #6's cold-start bar; simple GLA's: session 7, 19x)
# Without carried autotuning results a bench step takes most of a 600 s call; with them, minutes.
#   sweep-a      tile_sweep.py: the scan (the one op not yet swept in full under today's constraints; 62
#                kernel points, under a minute)
#   kt           kernel_times.py: recc's per-kernel times of gated DeltaNet, GLA and simple GLA at the
#                solver's tiles, no anchor (one branch against another: run it on each)
#   sweep-b      tile_sweep.py: DeltaProduct, DeltaNet (swept at BT <= 32 before the wgmma constraints)
#   ut64         kernel_times.py: gated DeltaNet's kernels at the solver's tiles and at BT = 64 (the UT
#                transform's cost there; run on a branch that changes it, e.g. wip-ut-registers)
#   ho-sweep     ho_sweep.py: every (BV, warps, stages) of chunk_fwd_ho (the forward without gradient) for
#                gated DeltaNet, simple GLA, DeltaProduct, GLA at T = 8K
#   ut-variants  kernel_times.py: gated DeltaNet at BT = 64 with the inverse's diagonal blocks of 8 and 16,
#                and at 32 with 16 (on main: the halves at 64; on wip-ut64: block rows at BI 16, the
#                lighter chunk_bwd_wy), the solver's tiles first
#
# Carry [".whl", ".probe"] (the anchors' wheels from ../shared/tools/anchor-wheels.sh; fla's autotuning
# results from an earlier call, .probe/autotune.tar, when there is one) and keep the returned
# autotune.tar in .probe/ for the next call.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT (the device tool does)}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD
[ -f .probe/autotune.tar ] && [ ! -f "$OUT/autotune.tar" ] && cp .probe/autotune.tar "$OUT/autotune.tar"
Ts=1024,4096,8192,32768
for step in "$@"; do
  echo "== $step $(date -u +%T)"
  case "$step" in
    check)
      timeout 170 python3 benchmarks/chunked_gpu_check.py --no-anchor --rep 30 2>&1 | grep -vi warn > "$OUT/check.log"
      tail -25 "$OUT/check.log" ;;
    check-fp32)
      timeout 200 python3 benchmarks/chunked_gpu_check.py --no-anchor --rep 10 --T 1024 --dtype fp32 2>&1 \
        | grep -vi warn > "$OUT/check-fp32.log"
      tail -25 "$OUT/check-fp32.log" ;;
    bench-delta|bench-gla|bench-rest|bench-sgla|bench-32k)
      ops=delta_rule,gated_delta_rule,gated_delta_product; limit=190; T=$Ts
      [ "$step" = bench-gla ] && ops=gla && limit=540
      [ "$step" = bench-sgla ] && ops=simple_gla && limit=150
      [ "$step" = bench-rest ] && ops=simple_gla,mlstm && limit=280
      [ "$step" = bench-32k ] && ops=gated_delta_product && limit=200 && T=32768
      python3 benchmarks/bench.py --ops "$ops" --T "$T" --no-cold --isolate "$limit" \
        --autotune-cache "$OUT/autotune.tar" --out "$OUT/$step.json" 2>&1 | grep -vi warn > "$OUT/$step.log"
      rm -f "$OUT/$step.png"
      tail -30 "$OUT/$step.log" ;;
    decode)
      timeout 250 python3 benchmarks/decode.py --out "$OUT/decode.json" 2>&1 | grep -vi warn > "$OUT/decode.log"
      tail -20 "$OUT/decode.log"
      timeout 250 python3 benchmarks/decode.py --grad --T 1,4,16,64 --out "$OUT/decode-grad.json" 2>&1 \
        | grep -vi warn > "$OUT/decode-grad.log"
      tail -12 "$OUT/decode-grad.log" ;;
    crash)
      timeout 260 python3 benchmarks/crash_repro.py --jobs 8 --out "$OUT/crash_repro.json" 2>&1 | grep -vi warn > "$OUT/crash.log"
      tail -60 "$OUT/crash.log"
      # the first crash points under compute-sanitizer memcheck: a __global__ access out of bounds would be
      # ours, a __shared__ one (or none while the launch faults) the compiler's
      S=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
      echo "compute-sanitizer: ${S:-none}"
      [ -n "$S" ] && timeout 320 python3 benchmarks/crash_repro.py --sanitize --sanitizer "$S" --only 2,9,16,23,30,37,39 \
        --jobs 4 --timeout 300 --out "$OUT/crash_memcheck.json" 2>&1 | grep -vi warn > "$OUT/crash_memcheck.log"
      [ -n "$S" ] && tail -30 "$OUT/crash_memcheck.log" ;;
    cold)
      timeout 540 python3 benchmarks/kernel_times.py --ops gated_delta_product --T 4096 2>&1 \
        | grep -vi warn > "$OUT/cold.log"
      tail -60 "$OUT/cold.log" ;;
    ut64)
      timeout 560 python3 benchmarks/kernel_times.py --ops gated_delta_rule --T 4096 --no-anchor \
        --tiles "gated_delta_rule:BT=64" 2>&1 | grep -vi warn > "$OUT/ut64.log"
      tail -60 "$OUT/ut64.log" ;;
    ut-variants)
      timeout 400 python3 benchmarks/kernel_times.py --ops gated_delta_rule --T 4096 --no-anchor \
        --tiles "gated_delta_rule:BT=64,BI=8;gated_delta_rule:BT=64,BI=16;gated_delta_rule:BT=32,BI=16" 2>&1 \
        | grep -vi warn > "$OUT/ut-variants.log"
      grep -E "=====|do_bench|wy_|bwd_wy" "$OUT/ut-variants.log" | head -60 ;;
    ho-sweep)
      timeout 380 python3 benchmarks/ho_sweep.py --T 8192 --budget 330 --out "$OUT/ho_sweep.json" \
        --configs gated_delta_rule:32,simple_gla:64,gated_delta_product:32,gla:64,simple_gla:128,gla:32 2>&1 \
        | grep -vi warn > "$OUT/ho_sweep.log"
      tail -20 "$OUT/ho_sweep.log" ;;
    kt)
      timeout 300 python3 benchmarks/kernel_times.py --ops gated_delta_rule,gla,simple_gla --T 4096 --no-anchor 2>&1 \
        | grep -vi warn > "$OUT/kt.log"
      grep -E "=====|do_bench|kernel" "$OUT/kt.log" | head -60 ;;
    sweep-a|sweep-b)
      ops=scan
      [ "$step" = sweep-b ] && ops=delta_product,delta_net
      python3 benchmarks/tile_sweep.py --ops "$ops" --time-budget 500 --out "$OUT/$step.json" 2>&1 \
        | grep -vi warn > "$OUT/$step.log"
      tail -20 "$OUT/$step.log" ;;
    *) echo "unknown step $step (check, check-fp32, bench-delta, bench-gla, bench-rest, bench-32k, crash, cold, ut64, ut-variants, kt, sweep-a, sweep-b)"; exit 2 ;;
  esac
done
