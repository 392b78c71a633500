#!/usr/bin/env bash
# GPU checks: every family trains with trainer=gpu (bf16-mixed) on the embedded data, then the
# per-step overhead table (scripts/bench_overhead.py) on the GPU where MNIST is at DATA_DIR.
# Nothing in genlab needs a GPU; this is the one script to run when one is available.
#
#   scripts/gpu_check.sh [OUT_DIR=gpu_check] [DATA_DIR=../shared/data]
#
# Needs genlab importable (pip install -e . , or PYTHONPATH=.) and a CUDA device visible to torch.
# Writes OUT_DIR/gpu_check.md (one row per family: exit status, steps, seconds, test NLL), the logs
# of each run, nvidia-smi's report and, with MNIST, OUT_DIR/overhead_gpu.md.
set -uo pipefail
out=${1:-${OUT:-gpu_check}}
data=${2:-../shared/data}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device, so there is nothing to check here (the CPU checks are the test suite)." >&2
  exit 2
fi
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true

# model and the embedded dataset it trains on
runs="pixelcnn:digits transformer:text vae:digits glow:digits ddpm:digits flow_matching:digits dcgan:digits ebm:digits"
status=0
for pair in $runs; do
  model=${pair%%:*}; dataset=${pair##*:}
  echo "== $model on $dataset (trainer=gpu)"
  python -m genlab.train model="$model" dataset="$dataset" trainer=gpu trainer.max_steps=200 \
      hydra.run.dir="$out/train_$model" callbacks.progress_bar.refresh_rate=0 > "$out/train_$model.log" 2>&1
  rc=$?
  echo "$model $rc" >> "$out/exit_codes.txt"
  [ "$rc" -eq 0 ] || { status=1; tail -5 "$out/train_$model.log"; }
done

python - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = ["| model | exit | steps | train s | test s | test NLL (kind) |", "|---|---|---|---|---|---|"]
for line in (out / "exit_codes.txt").read_text().split("\n"):
    if not line.strip():
        continue
    model, rc = line.split()
    path = out / f"train_{model}" / "results.json"
    r = json.loads(path.read_text()) if path.exists() else {}
    t, tm = r.get("test", {}), r.get("timings", {})
    nll = f"{t['nll_bpd']:.3f} ({t['nll_kind']})" if t.get("nll_kind", "none") != "none" else "—"
    fmt = lambda v: "—" if v is None else f"{v:.1f}"
    rows.append(f"| {model} | {rc} | {r.get('global_step', '—')} | {fmt(tm.get('train_seconds'))} | "
                f"{fmt(tm.get('test_seconds'))} | {nll} |")
(out / "gpu_check.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
EOF

if [ -d "$data/MNIST" ]; then
  python scripts/bench_overhead.py --device cuda --data-dir "$data" --steps 200 --warmup 30 --pairs 2 \
      | tee "$out/overhead_gpu.md" || status=1
else
  echo "gpu_check: no MNIST at $data (pass DATA_DIR): the overhead table on the GPU was not measured" >&2
fi
exit $status
