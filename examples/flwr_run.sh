#!/usr/bin/env bash
# Run fedw2v's Flower app (the ServerApp/ClientApp that `fedw2v simulate` runs) with `flwr run`, on a local
# simulation SuperLink on loopback, then stop that SuperLink and everything it started.
#
#   examples/flwr_run.sh [CLIENTS_MANIFEST] [RUN_DIR] [extra run-config, e.g. "rounds=3 seed=1"]
#
# The run config's defaults are `fedw2v simulate`'s (pyproject.toml's [tool.flwr.app.config], generated from
# fedw2v/config/simulate.py: the paper's settings); this script runs a small CPU run instead (SMALL below: the
# tiny model and recipe, 2 rounds of 2 clients, 1 local epoch), and the extra run config overrides it.
# `make demo` makes demo/clients.parquet. Needs: the project's .venv (make install).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=$(realpath "${1:-demo/clients.parquet}")
RUN_DIR=$(realpath -m "${2:-runs/flwr-demo}")
EXTRA=${3:-}
SMALL="model='tiny' recipe='tiny' rounds=2 clients-per-round=2 local-epochs=1 gpus-per-client=0.0 cpus-per-client=1.0"
export PATH="$PWD/.venv/bin:$PATH"
export FLWR_HOME=${FLWR_HOME:-$(mktemp -d)}
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
mkdir -p "$FLWR_HOME"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "local"

[superlink.local]
address = ":local:"
TOML
# The simulation's shape (2 virtual SuperNodes, 1 CPU and no GPU per ClientApp) travels with the run, as Flower
# >= 1.28 wants it (`options.` in the connection above is deprecated there).
FEDERATION="num-supernodes=2 client-resources-num-cpus=1 client-resources-num-gpus=0.0"

source examples/processes.sh  # kill_tree, alive, stop_pids
stop_superlink() {  # the SuperLink that `flwr run` started for this FLWR_HOME, and everything it started
  # shellcheck disable=SC2046
  stop_pids flwr_run.sh $(pgrep -f "flower-superlink.*$FLWR_HOME" 2>/dev/null || true)
}
trap stop_superlink EXIT

flwr run . --stream --federation-config "$FEDERATION" \
    --run-config "clients-manifest='$CLIENTS' run-dir='$RUN_DIR' $SMALL" ${EXTRA:+--run-config "$EXTRA"}
test -f "$RUN_DIR/checkpoints/LATEST" || { echo "flwr run finished without a checkpoint in $RUN_DIR" >&2; exit 1; }
echo "flwr run: $RUN_DIR/checkpoints/$(cat "$RUN_DIR/checkpoints/LATEST")"
