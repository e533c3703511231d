#!/usr/bin/env bash
# Set up a REAL arm64 board (Debian, Ubuntu, Raspberry Pi OS 64-bit, the ZCU104's PYNQ image on its Cortex-A53
# PS, ...) as an edgemtl device: a venv with TVM's runtime + ONNX Runtime, the RPC server launcher, and a
# systemd unit that keeps the server registered with your tracker. Run ON THE BOARD, from a copy of hw/arm64/:
#
#   scp -r hw/arm64 USER@BOARD:edgemtl-arm64 && ssh USER@BOARD
#   bash edgemtl-arm64/setup_board.sh --tracker HOST:9190 --key KEY [--prefix ~/edgemtl-board]
#        [--install-service]      # also install + start the systemd unit (uses sudo)
#        [--start]                # or: run the server in the foreground now
#
# Needs python3 (3.9-3.13) with the venv module (Debian/Ubuntu: sudo apt-get install python3-venv), glibc >= 2.28
# (the aarch64 wheels are manylinux_2_28), and network access to PyPI (or a pip mirror set in pip.conf).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TRACKER=""
KEY=""
PREFIX="$HOME/edgemtl-board"
PYTHON="${PYTHON:-python3}"
INSTALL_SERVICE=0
START=0
PINS="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 onnxruntime numpy psutil cloudpickle"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tracker) TRACKER="$2"; shift 2 ;;
    --key) KEY="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --install-service) INSTALL_SERVICE=1; shift ;;
    --start) START=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done
[ -n "$TRACKER" ] && [ -n "$KEY" ] || { echo "need --tracker HOST:PORT and --key KEY" >&2; usage 2; }
log() { printf '[setup_board] %s\n' "$*" >&2; }

case "$(uname -m)" in
  aarch64|arm64) ;;
  armv7l|armv6l) log "this is a 32-bit ARM OS: there are no TVM runtime wheels for it; install a 64-bit OS"; exit 1 ;;
  *) log "warning: $(uname -m) is not arm64; continuing (the server works on any CPU TVM has wheels for)" ;;
esac

mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
  log "creating $PREFIX/venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$PREFIX/venv" || { log "no venv module: sudo apt-get install python3-venv"; exit 1; }
fi
log "pip install $PINS"
# shellcheck disable=SC2086
"$PREFIX/venv/bin/python" -m pip install -q --upgrade pip
# shellcheck disable=SC2086
"$PREFIX/venv/bin/python" -m pip install -q --only-binary=apache-tvm,apache-tvm-ffi,onnxruntime,numpy $PINS

cp "$HERE/rpc_server.py" "$PREFIX/rpc_server.py"
if [ -f "$HERE/ort_runner.py" ]; then cp "$HERE/ort_runner.py" "$PREFIX/ort_runner.py"; fi

# The launcher the unit runs: preloads ort_runner.py (the board-side ONNX Runtime runner) when present.
cat > "$PREFIX/run_server.sh" <<EOF
#!/bin/sh
# Start this board's TVM RPC server, registered with the tracker. Written by setup_board.sh.
#   EDGEMTL_TRACKER=HOST:PORT EDGEMTL_KEY=KEY $PREFIX/run_server.sh [more rpc_server.py options]
DIR="\$(cd "\$(dirname "\$0")" && pwd)"
PRELOAD=""
[ -f "\$DIR/ort_runner.py" ] && PRELOAD="--preload \$DIR/ort_runner.py"
exec "\$DIR/venv/bin/python" "\$DIR/rpc_server.py" --tracker "\${EDGEMTL_TRACKER:-$TRACKER}" \\
  --key "\${EDGEMTL_KEY:-$KEY}" \$PRELOAD "\$@"
EOF
chmod +x "$PREFIX/run_server.sh"

log "checking the runtime"
"$PREFIX/venv/bin/python" -c "import platform, numpy, onnxruntime, tvm, tvm_ffi; print('[setup_board]', platform.machine(), 'python', platform.python_version(), 'tvm', tvm.__version__, 'tvm-ffi', tvm_ffi.__version__, 'onnxruntime', onnxruntime.__version__)" >&2

# The systemd unit, from the example next to this script, with this board's user, paths, tracker and key.
sed -e "s|^User=.*|User=$(id -un)|" \
    -e "s|^Environment=EDGEMTL_TRACKER=.*|Environment=EDGEMTL_TRACKER=$TRACKER|" \
    -e "s|^Environment=EDGEMTL_KEY=.*|Environment=EDGEMTL_KEY=$KEY|" \
    -e "s|/home/edgemtl/edgemtl-board|$PREFIX|g" \
    "$HERE/edgemtl-rpc.service" > "$PREFIX/edgemtl-rpc.service"
log "systemd unit written to $PREFIX/edgemtl-rpc.service"

if [ "$INSTALL_SERVICE" = 1 ]; then
  sudo install -m 0644 "$PREFIX/edgemtl-rpc.service" /etc/systemd/system/edgemtl-rpc.service
  sudo systemctl daemon-reload
  sudo systemctl enable --now edgemtl-rpc.service
  log "service started: systemctl status edgemtl-rpc; journalctl -u edgemtl-rpc -f"
elif [ "$START" = 1 ]; then
  exec "$PREFIX/run_server.sh"
else
  log "start it now:        $PREFIX/run_server.sh"
  log "or as a service:     sudo install -m 0644 $PREFIX/edgemtl-rpc.service /etc/systemd/system/ && sudo systemctl enable --now edgemtl-rpc"
fi
