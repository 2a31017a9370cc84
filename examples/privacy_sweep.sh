#!/usr/bin/env bash
# The privacy-utility sweep: the demo's federated setting (`make demo`'s DEMO_FL) with no DP, then --dp local and
# --dp central for each noise multiplier z, each run followed by the footprint attack; one table (defence, z, C,
# final ε, final test WER/CER, lowest pooled footprint EER with its 95% interval) and one plot (EER against CER,
# labelled with ε). Run from the repository root after `make demo` (or pass the clients manifest):
#
#   examples/privacy_sweep.sh [CLIENTS] [OUT_DIR]
#   LOCAL_Z="0.0001 0.001" CENTRAL_Z="0.01 1" CLIP=5 examples/privacy_sweep.sh demo/clients.parquet runs/sweep
#
# Cost: one demo run (6 rounds) plus one footprint analysis (rounds 2, 4, 6) per setting: ~3.5 min a setting
# on 2 idle cores (199-220 s), ~30 min under a load average of ~15 (README, "The privacy-utility sweep").
# What the README shows is the default list: LOCAL_Z="0.0003 0.003 0.01 0.03" CENTRAL_Z="0.003 0.03 1".
# Every run is kept (OUT_DIR/<setting>/, with footprint.json); a rerun skips the settings already done.
set -euo pipefail
CLIENTS=${1:-demo/clients.parquet}
OUT=${2:-runs/privacy-sweep}
LOCAL_Z=${LOCAL_Z:-"0.0003 0.003 0.01 0.03"}
CENTRAL_Z=${CENTRAL_Z:-"0.003 0.03 1"}
CLIP=${CLIP:-5}
DELTA=${DELTA:-1e-5}
FEDW2V=${FEDW2V:-fedw2v}
export PATH="$PWD/.venv/bin:$PATH" RAY_worker_niceness=0 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
test -f "$CLIENTS" || { echo "no $CLIENTS: run \`make demo\` first, or pass a clients manifest" >&2; exit 2; }
mkdir -p "$OUT"

# the demo's federated setting (Makefile DEMO_FL), uniform weights in every run so only the defence differs
DEMO_FL=(--model tiny-pretrained --recipe paper --batch-size 8 --lr-encoder 1e-3 --lr-head 1e-3 --no-newbob
         --rounds 6 --clients-per-round 4 --local-epochs 4 --cpus-per-client 1 --gpus-per-client 0
         --eval-every 1 --seed 0 --footprint-rounds 2,4,6 --weighting uniform)

one() {  # NAME, then the defence's options
  local name=$1 run="$OUT/$1"
  shift
  if [ -f "$run/footprint.json" ]; then echo "== $name: done before ($run)"; return; fi
  rm -rf "$run"
  echo "== $name: simulate $*"
  local t0=$SECONDS
  "$FEDW2V" simulate "$CLIENTS" --run-dir "$run" "${DEMO_FL[@]}" "$@"
  echo "== $name: footprint"
  "$FEDW2V" footprint "$run" --json > "$run/footprint.json.tmp"
  mv "$run/footprint.json.tmp" "$run/footprint.json"
  echo "== $name: $((SECONDS - t0)) s"
}

runs=()
one off; runs+=("$OUT/off")
for z in $LOCAL_Z; do
  one "local-z$z" --dp local --dp-noise-multiplier "$z" --dp-clip "$CLIP" --dp-delta "$DELTA"
  runs+=("$OUT/local-z$z")
done
for z in $CENTRAL_Z; do
  one "central-z$z" --dp central --dp-noise-multiplier "$z" --dp-clip "$CLIP" --dp-delta "$DELTA"
  runs+=("$OUT/central-z$z")
done
"${PYTHON:-python}" -m fedw2v.privacy.sweep "${runs[@]}" --plot "$OUT/privacy-sweep.png" --markdown | tee "$OUT/table.md"
