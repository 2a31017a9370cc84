#!/usr/bin/env bash
# Installs the Debian packages fedw2v needs (speech synthesisers for the demo corpus) when they are missing.
# Runs apt-get as root, or through sudo when that works without a password; otherwise says what to run.
set -euo pipefail
need=()
command -v flite >/dev/null 2>&1 || need+=(flite)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
[ ${#need[@]} -eq 0 ] && exit 0
echo "fedw2v: installing missing system packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  apt=(apt-get)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  apt=(sudo apt-get)
else
  echo "fedw2v: missing system packages: ${need[*]}." >&2
  echo "        Install them as root:  apt-get install -y ${need[*]}   (then run make again)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || { "${apt[@]}" update -q >/dev/null && "${apt[@]}" install -y -q --no-install-recommends "${need[@]}"; }
