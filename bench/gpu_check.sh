#!/usr/bin/env bash
# One call on a CUDA machine: kernel correctness tests, the kernel benchmark, then the decoding
# benchmark (bf16, with runs/demo/final when it is there); prints a short table. Installs nothing:
# it uses the machine's python3 (torch + triton) and, when specdistill is not installed there,
# puts this checkout on the path through a folder of symlinks.
#
#   bash bench/gpu_check.sh            # PYTHON=... to pick the interpreter; OUT=dir keeps the logs
#
# About 5-8 minutes on one H100/H200; each step has a timeout (4, 5.5 and 4 minutes).
# Record what it prints in bench/RESULTS.md with the date and the device.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

if ! "$PY" -c "import torch, triton, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: $PY has no CUDA torch + triton; nothing to check" >&2
    exit 2
fi

# specdistill.kernels lives in kernels/src/ (setuptools package-dir); mirror that layout with symlinks
# instead of installing the package.
if ! "$PY" -c "import specdistill.kernels, specdistill.losses" 2>/dev/null; then
    SHADOW=$(mktemp -d)/path
    mkdir -p "$SHADOW/specdistill"
    for entry in "$ROOT"/specdistill/*; do ln -s "$entry" "$SHADOW/specdistill/"; done
    ln -s "$ROOT/kernels/src" "$SHADOW/specdistill/kernels"
    ln -s "$ROOT/serve/src" "$SHADOW/specdistill/serve"
    export PYTHONPATH="$SHADOW${PYTHONPATH:+:$PYTHONPATH}"
fi

"$PY" - <<'EOF' | tee "$OUT/device.txt"
import torch, triton
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, triton {triton.__version__}")
EOF

echo "== kernel tests (tests/kernels on CUDA)"
timeout 240 "$PY" -m pytest tests/kernels -q -p no:cacheprovider -o addopts="" > "$OUT/tests.txt" 2>&1
TESTS_RC=$?
tail -n 15 "$OUT/tests.txt"

echo "== kernel benchmark (bench/bench_kernels.py --device cuda --sweep)"
timeout 330 "$PY" bench/bench_kernels.py --device cuda --sweep > "$OUT/bench_kernels.txt" 2>&1
BENCH_RC=$?
grep -v '^{' "$OUT/bench_kernels.txt" | tail -n 30

echo "== decoding benchmark (bench/bench_decode.py --device cuda --dtype bf16)"
timeout 240 "$PY" bench/bench_decode.py --device cuda --dtype bf16 --num-prompts 4 > "$OUT/bench_decode.txt" 2>&1
DECODE_RC=$?
grep -v '^{' "$OUT/bench_decode.txt" | tail -n 30

echo "== summary"
"$PY" - "$OUT" "$TESTS_RC" "$BENCH_RC" <<'EOF'
import json, sys
out, tests_rc, bench_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tests = [l for l in open(f"{out}/tests.txt") if " passed" in l or " failed" in l or " error" in l]
print(f"{'kernel tests':<32}{'ok' if tests_rc == 0 else 'FAILED'}  {tests[-1].strip() if tests else ''}")
lines = [l for l in open(f"{out}/bench_kernels.txt") if l.startswith("{")]
if not lines:
    print(f"{'kernel benchmark':<32}FAILED (rc {bench_rc})")
    sys.exit(0)
report = json.loads(lines[-1])
for r in report["results"]:
    print(f"{r['case']:<32}{r.get('ms', float('nan')):>10.2f} ms{r.get('peak_mib', float('nan')):>12.0f} MiB")
goals = report["ratios"]
for key in ("fused_bw_vs_copy", "fused_speedup_vs_reference", "chunked_triton_mem_vs_materialized",
            "chunked_triton_time_vs_materialized"):
    if key in goals:
        print(f"{key:<40}{goals[key]:>8.3f}")
EOF
echo "decoding benchmark: $([ "$DECODE_RC" -eq 0 ] && echo ok || echo "FAILED (rc $DECODE_RC)")"
echo "logs: $OUT"
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ] && [ "$DECODE_RC" -eq 0 ]
