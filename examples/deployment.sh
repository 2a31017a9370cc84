#!/usr/bin/env bash
# A real federation on Flower's Deployment Engine, on loopback: every participant's data stays on its SuperNode.
#
#   examples/deployment.sh [CORPUS_MANIFEST] [WORK_DIR] [extra run-config, e.g. "rounds=3 seed=1"]
#
# CORPUS_MANIFEST is a prepared corpus (`fedw2v prepare`; `make demo` makes demo/manifest.parquet). In WORK_DIR:
#   1. participants/client-K/  `fedw2v partition --export-clients --export-audio copy`: 3 clients, each folder
#                              holding only that client's rows and its own speech (what its owner keeps);
#   2. pki/                    a CA, the SuperLink's TLS certificate (signed by the CA, for 127.0.0.1) and one
#                              ECDSA P-384 key pair per SuperNode (openssl, ssh-keygen);
#   3. a SuperLink with TLS and SuperNode authentication; the 3 public node keys registered with
#      `flwr supernode register`; 3 SuperNodes, each with its own client's manifest in --node-config;
#   4. `flwr run` of 2 rounds of the `tiny-pretrained` model; the server scores the corpus test split itself
#      (eval-manifest) and asks every node to score its local test split; run directory WORK_DIR/run;
#   5. stops every process it started, by PID (and what they started), on exit, success or not.
# Logs and the SuperLink's and SuperNodes' pids: WORK_DIR/logs/. Needs openssl, ssh-keygen and the project's .venv (or fedw2v and flwr on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=$PWD
CORPUS=$(realpath "${1:-demo/manifest.parquet}")
WORK=$(realpath -m "${2:-runs/deployment-demo}")
EXTRA=${3:-}
[ -d "$PROJECT/.venv/bin" ] && export PATH="$PROJECT/.venv/bin:$PATH"  # SuperLink/SuperNode start flower-superexec
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_HOME=${FLWR_HOME:-$WORK/flwr-home}
# each SuperNode's SuperExec looks for a new message to start a ClientApp for every second by default
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL=${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}
NODES=${NODES:-3}
PORT=${SUPERLINK_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
PKI=$WORK/pki LOGS=$WORK/logs RUN_DIR=$WORK/run
mkdir -p "$WORK" "$PKI" "$LOGS" "$FLWR_HOME"

PIDS=()
source examples/processes.sh  # kill_tree, alive, stop_pids
stop_all() { stop_pids deployment.sh "${PIDS[@]}"; }
trap stop_all EXIT

# 1. what each participant gets: their own manifest and audio (here made from one corpus; in real life each
#    participant runs `fedw2v prepare` on their own recordings, or is handed their folder)
fedw2v partition "$CORPUS" -o "$WORK/clients.parquet" --max-clients "$NODES" \
    --export-clients "$WORK/participants" --export-audio copy > "$LOGS/partition.log"
mapfile -t MANIFESTS < <(ls "$WORK"/participants/client-*/client.parquet)

# 2. the CA (the operator keeps ca.key offline; everybody gets ca.crt), the SuperLink's certificate (server.key
#    stays on the SuperLink's machine) and one key pair per SuperNode (node-K.key stays with participant K; the
#    operator registers node-K.key.pub): examples/deployment_pki.sh
examples/deployment_pki.sh "$PKI" "$NODES"

# 3. the operator's SuperLink (TLS + SuperNode authentication) and the flwr CLI's connection to it
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "deployment"

[superlink.deployment]
address = "127.0.0.1:$PORT"
root-certificates = "$PKI/ca.crt"
TOML
setsid flower-superlink --host 127.0.0.1 --port "$PORT" --ssl-ca-certfile "$PKI/ca.crt" --ssl-certfile "$PKI/server.pem" \
    --ssl-keyfile "$PKI/server.key" --enable-supernode-auth > "$LOGS/superlink.log" 2>&1 &
PIDS+=($!); disown
echo "${PIDS[0]}" > "$LOGS/superlink.pid"
for i in $(seq 120); do
  flwr supernode ls deployment > /dev/null 2>&1 && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { echo "the SuperLink exited; see $LOGS/superlink.log" >&2; exit 1; }
  sleep 0.5
done
for k in $(seq 0 $((NODES - 1))); do
  flwr supernode register "$PKI/node-$k.key.pub" deployment --name "participant-$k" > "$LOGS/register-$k.log"
done

# ... and each participant's SuperNode, with only their own data
for k in $(seq 0 $((NODES - 1))); do
  CONFIG_VAR=NODE_CONFIG_$k CONFIG=${!CONFIG_VAR:-}  # NODE_CONFIG_K: another --node-config for node K (tests)
  setsid flower-supernode --superlink "127.0.0.1:$PORT" --root-certificates "$PKI/ca.crt" \
      --auth-supernode-private-key "$PKI/node-$k.key" --port $((PORT + 1 + k)) \
      --node-config "${CONFIG:-manifest='${MANIFESTS[$k]}'}" > "$LOGS/supernode-$k.log" 2>&1 &
  PIDS+=($!); disown
  echo $! > "$LOGS/supernode-$k.pid"
done

# 4. the run: the server holds no client rows (clients-manifest empty), scores the corpus test split itself
SMALL="model='tiny-pretrained' recipe='tiny' rounds=2 clients-per-round=$NODES local-epochs=1 round-timeout=300.0"
flwr run . deployment --stream \
    --run-config "clients-manifest='' eval-manifest='$CORPUS' run-dir='$RUN_DIR' $SMALL" \
    ${EXTRA:+--run-config "$EXTRA"} > "$LOGS/flwr-run.log" 2>&1 \
  || { tail -n 30 "$LOGS/flwr-run.log" >&2; exit 1; }
test -f "$RUN_DIR/checkpoints/LATEST" || { tail -n 30 "$LOGS/flwr-run.log" >&2; exit 1; }
echo "deployment run: $RUN_DIR/checkpoints/$(cat "$RUN_DIR/checkpoints/LATEST") ($NODES SuperNodes, TLS, node auth)"
