#!/bin/bash
# Train the same short runs with the code at a git revision and with the working tree, and print
# their results side by side (test / val NLL in bits/dim and the logged evaluation statistics):
# a refactor that changes no behaviour prints identical pairs.
#
#   scripts/parity.sh <revision> [family ...]      # families: vae pixelcnn glow ddpm fm ebm gan
#
# The old side is a git worktree of <revision> in a temp dir; each run is seed 0, one thread.
set -euo pipefail
rev=$1; shift
families=${*:-vae pixelcnn glow ddpm fm ebm gan}
root=$(git rev-parse --show-toplevel)
tmp=$(mktemp -d)
git -C "$root" worktree add -f -q "$tmp/old" "$rev"
trap 'git -C "$root" worktree remove -f "$tmp/old"; rm -rf "$tmp"' EXIT
declare -A RUN=(
  [vae]="model=vae dataset=digits trainer.max_steps=40 model.test_k=20"
  [pixelcnn]="model=pixelcnn dataset=digits trainer.max_steps=20"
  [glow]="model=glow dataset=digits trainer.max_steps=20"
  [ddpm]="model=ddpm dataset=digits trainer.max_steps=20 model.test_timesteps=8 model.net.channels=16"
  [fm]="model=flow_matching dataset=digits trainer.max_steps=20 model.net.channels=16 trainer.limit_test_batches=1"
  [ebm]="model=ebm_mlp dataset=mixture2d trainer.max_steps=40"
  [gan]="experiment=gan_mixture2d trainer.max_steps=400"
)
for name in $families; do
  for side in old new; do
    src=$([ "$side" = old ] && echo "$tmp/old" || echo "$root")
    out="$tmp/runs/$side/$name"
    # shellcheck disable=SC2086
    (cd "$src" && PYTHONPATH="$src" OMP_NUM_THREADS=1 WANDB_MODE=offline python -m genlab.train ${RUN[$name]} \
      seed=0 num_samples=4 callbacks.progress_bar.refresh_rate=0 hydra.run.dir="$out" > "$tmp/$side-$name.log" 2>&1) \
      || { echo "$side $name: failed (log: $tmp/$side-$name.log)"; continue; }
    python - "$out/results.json" "$side" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
extra = {k: round(v, 6) for k, v in r["metrics"].items() if k.endswith(("_se", "_timesteps", "nfe"))}
print(f"{sys.argv[2]:>3} {sys.argv[3]:<9} {r['status']:<9} test {r['test'].get('nll_bpd')} val {r['val'].get('nll_bpd')} "
      f"{r['sample_metrics'] or ''} {extra or ''}")
PY
  done
done
