#!/bin/sh
# Install the peers the benchmark harness compares bulkgetty against (Debian 12).
# The harness itself never installs anything; it skips (and names) a missing peer.
set -eu
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
$SUDO apt-get install -y nginx aria2 curl time
# nginx's package starts a system service on :80; the harness runs its own instance only.
$SUDO systemctl disable --now nginx 2>/dev/null || $SUDO service nginx stop 2>/dev/null || true
python -m pip install 'parfive>=2.1,<3'
