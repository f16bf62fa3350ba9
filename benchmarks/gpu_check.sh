#!/usr/bin/env bash
# One prepared GPU check (issue 17 item 6). NOT YET RUN ON A GPU: no GPU has been available.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on a CUDA 12 machine
#
# 1. installs the CUDA build of the jax version in use (jax[cuda12]==<installed jax>);
# 2. checks every attention path that runs on the GPU against `reference` on the GPU, values and
#    all gradients (benchmarks/gpu_parity.py; float32 <= 1e-5 relative, bf16 CPB <= 3e-2),
#    including `pallas`, the Pallas Triton kernels of smml_jax/ops/pallas_attention_gpu.py (their
#    first compile to PTX and first run: on a CPU host they were only interpreted and lowered for
#    `cuda`, tests/test_ops_pallas_gpu.py), which must appear as 2 Triton custom calls;
# 3. measures the full-shape train step at batch 8, 32 and the largest batch that runs (doubling
#    from 64 until a batch fails), float32 and bfloat16, `auto` (= `fused` on a GPU until these
#    rows say otherwise: dispatch.ACCELERATOR_ATTENTION), `fused` and `pallas`;
# 4. appends the rows to benchmarks/RESULTS.md under a dated "GPU (gpu_check.sh)" heading and
#    keeps the raw JSON lines in benchmarks/gpu_check.jsonl.
# Exits non-zero (and writes no rows) when the parity check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

JAX_VERSION="$(python -c 'import jax; print(jax.__version__)')"
python -m pip install --quiet "jax[cuda12]==${JAX_VERSION}"
python - <<'PY'
import jax
assert jax.default_backend() == "gpu", f"no GPU backend after installing jax[cuda12]: {jax.devices()}"
print("GPU:", jax.devices())
PY

python -m benchmarks.gpu_parity | tee benchmarks/gpu_parity.jsonl

OUT=benchmarks/gpu_check.jsonl
: > "$OUT"
for dtype in float32 bfloat16; do
  for impl in auto fused pallas; do
    python -m benchmarks.throughput --json --impl "$impl" --dtype "$dtype" --batch-sizes 8 32 \
      | tee -a "$OUT"
    b=64
    while python -m benchmarks.throughput --json --impl "$impl" --dtype "$dtype" \
        --batch-sizes "$b" --steps 3 --warmup 1 | tee -a "$OUT" | grep -q '^{'; do
      b=$((b * 2))
      [ "$b" -gt 4096 ] && break
    done
  done
done

python - "$OUT" <<'PY'
import datetime, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
lines = ["", f"## GPU (gpu_check.sh), {datetime.date.today()}: {rows[0]['device']}, jax {rows[0]['jax']}",
         "", "| batch | impl | path | dtype | train step s | train slides/s | forward slides/s | "
         "compile s | peak device MB |", "|---|---|---|---|---|---|---|---|---|"]
for r in rows:
  lines.append(f"| {r['batch']} | {r['attention_impl']} | {r['attention_path']} | "
               f"{r['compute_dtype']} | {r['step_s_median']:.3f} | {r['train_slides_per_s']:.2f} | "
               f"{r['forward_slides_per_s']:.2f} | {r['compile_train_s']:.1f} | "
               f"{r['peak_device_mb']} |")
open("benchmarks/RESULTS.md", "a").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
