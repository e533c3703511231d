#!/usr/bin/env bash
# Build the EMULATED arm64 board: an aarch64 Debian 12 sysroot with Python 3.11, numpy, ONNX Runtime and
# Apache TVM's runtime, run under qemu-user (qemu-aarch64-static). It serves TVM RPC exactly like a real
# board (bin/rpc_server --tracker HOST:PORT --key KEY), so the hardware-in-the-loop path is exercised for real.
# Timings measured on it are EMULATED: they are not device latencies and must never be quoted as such.
#
#   hw/arm64/make_emulated_board.sh [BOARD_DIR]      (or: make emulated-arm64)
#
# BOARD_DIR defaults to $EDGEMTL_ARM64_BOARD, else <repo>/.cache/arm64-board. Idempotent: downloads are kept
# in BOARD_DIR/downloads, the sysroot is rebuilt only when the package pins below change, and the bin/ scripts
# are rewritten on every run. Needs: bash, dpkg-deb, apt-get (Debian/Ubuntu host), a host python with pip;
# as root it installs the Debian packages qemu-user-static and g++-aarch64-linux-gnu (the cross linker that
# exports modules for the board) when they are missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BOARD="${1:-${EDGEMTL_ARM64_BOARD:-$REPO/.cache/arm64-board}}"
mkdir -p "$BOARD"
BOARD="$(cd "$BOARD" && pwd)"

# --- pins (changing any of these rebuilds the sysroot) ------------------------------------------------------
DEBIAN_SUITE=bookworm                   # Debian 12: python3.11, glibc 2.36 (>= the wheels' manylinux_2_28)
DEBIAN_MIRROR=http://deb.debian.org/debian
DEBIAN_PACKAGES="python3.11-minimal libpython3.11-stdlib libstdc++6 zlib1g"
PY_PACKAGES="apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy==2.4.6 onnxruntime==1.31.1 \
psutil==7.2.2 cloudpickle==3.1.3 tornado==6.6.1 ml_dtypes==0.6.0"
# pip --platform does not expand manylinux tags: name every glibc level up to bookworm's 2.36.
PY_PLATFORMS="manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_24_aarch64 manylinux_2_26_aarch64 \
manylinux_2_27_aarch64 manylinux_2_28_aarch64 manylinux_2_31_aarch64 manylinux_2_34_aarch64 manylinux_2_35_aarch64 \
manylinux_2_36_aarch64"
PIN_HASH="$(printf '%s\n' 3 "$DEBIAN_SUITE" "$DEBIAN_PACKAGES" "$PY_PACKAGES" "$PY_PLATFORMS" | sha256sum | cut -c1-16)"

log() { printf '[emulated-arm64] %s\n' "$*" >&2; }
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
T0=$(date +%s)

# --- host tools ----------------------------------------------------------------------------------------------
need_apt=""
command -v qemu-aarch64-static >/dev/null || need_apt="$need_apt qemu-user-static"
command -v aarch64-linux-gnu-g++ >/dev/null || need_apt="$need_apt g++-aarch64-linux-gnu"
if [ -n "$need_apt" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install$need_apt"
    export DEBIAN_FRONTEND=noninteractive
    APT_INSTALL="apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600"
    # shellcheck disable=SC2086
    $APT_INSTALL $need_apt >/dev/null || { apt-get update -qq -o DPkg::Lock::Timeout=600 && $APT_INSTALL $need_apt >/dev/null; }
  else
    log "missing:$need_apt -- run: sudo apt-get install$need_apt"
    command -v qemu-aarch64-static >/dev/null || exit 1
  fi
fi
QEMU="$(command -v qemu-aarch64-static)"

if [ -n "${HOST_PYTHON:-}" ]; then :
elif [ -x "$REPO/.venv/bin/python" ]; then HOST_PYTHON="$REPO/.venv/bin/python"
else HOST_PYTHON=python3; fi
if ! "$HOST_PYTHON" -m pip --version >/dev/null 2>&1; then
  # Only pip's download/--target install is needed (pure Python): a throwaway venv serves.
  [ -x "$BOARD/downloads/host-pip/bin/python" ] || "$HOST_PYTHON" -m venv "$BOARD/downloads/host-pip"
  HOST_PYTHON="$BOARD/downloads/host-pip/bin/python"
fi

SYSROOT="$BOARD/sysroot"
DL="$BOARD/downloads"
STAMP="$BOARD/.built"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PIN_HASH" ] && [ -x "$SYSROOT/usr/bin/python3.11" ]; then
  log "sysroot up to date ($SYSROOT)"
else
  rm -f "$STAMP"
  # --- Debian arm64 packages, with a private apt state (the host's apt configuration is not touched) -------
  APT="$DL/apt"
  mkdir -p "$APT/lists/partial" "$APT/archives/partial" "$APT/sources.list.d" "$APT/preferences.d" "$APT/apt.conf.d"
  : > "$APT/status"
  echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $DEBIAN_SUITE main" \
    > "$APT/sources.list"
  APT_OPTS=(-o "Dir::State=$APT" -o "Dir::State::Lists=$APT/lists" -o "Dir::State::status=$APT/status"
            -o "Dir::Cache=$APT" -o "Dir::Cache::archives=$APT/archives" -o "Dir::Cache::pkgcache="
            -o "Dir::Cache::srcpkgcache=" -o "Dir::Etc::SourceList=$APT/sources.list"
            -o "Dir::Etc::SourceParts=$APT/sources.list.d" -o "Dir::Etc::PreferencesParts=$APT/preferences.d"
            -o "Dir::Etc::Parts=$APT/apt.conf.d" -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64"
            -o "APT::Install-Recommends=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
  log "fetching Debian $DEBIAN_SUITE arm64: $DEBIAN_PACKAGES (+ dependencies)"
  apt-get "${APT_OPTS[@]}" -qq update
  # With an empty dpkg status, --download-only fetches the whole dependency closure into $APT/archives.
  # shellcheck disable=SC2086
  apt-get "${APT_OPTS[@]}" -qq -y --download-only install $DEBIAN_PACKAGES >/dev/null
  rm -rf "$APT/lists"   # the package lists are 9 MB and only needed for the step above

  # --- aarch64 wheels from PyPI ----------------------------------------------------------------------------
  WHEELS="$DL/wheels"
  mkdir -p "$WHEELS"
  PLAT=(); for p in $PY_PLATFORMS; do PLAT+=(--platform "$p"); done
  TAGS=(--python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none --only-binary=:all:)
  log "fetching aarch64 wheels: $PY_PACKAGES"
  # shellcheck disable=SC2086
  "$HOST_PYTHON" -m pip download -q --disable-pip-version-check -d "$WHEELS" "${PLAT[@]}" "${TAGS[@]}" $PY_PACKAGES

  # --- unpack into a fresh sysroot ---------------------------------------------------------------------------
  NEW="$BOARD/sysroot.new"
  rm -rf "$NEW"; mkdir -p "$NEW"
  log "unpacking $(ls "$APT/archives"/*.deb | wc -l) .deb files"
  for deb in "$APT/archives"/*.deb; do dpkg-deb -x "$deb" "$NEW"; done
  # The wheels go to the dist-packages folder Debian's python3.11 puts on sys.path.
  SITE="$NEW/usr/lib/python3/dist-packages"
  mkdir -p "$SITE"
  log "installing wheels"
  # shellcheck disable=SC2086
  "$HOST_PYTHON" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" --target "$SITE" \
    --no-compile "${PLAT[@]}" "${TAGS[@]}" $PY_PACKAGES
  rm -rf "$SITE/bin"   # console scripts with the host's shebang: useless on the board
  # No CUDA on the board; this plugin only fails to load.
  rm -f "$SITE/tvm/lib/libtvm_runtime_cuda.so"
  # Debian's sitecustomize (apport hook) is a link to /etc; ours, below, replaces it.
  rm -f "$NEW/usr/lib/python3.11/sitecustomize.py"
  cat > "$SITE/sitecustomize.py" <<'EOF'
# Written by hw/arm64/make_emulated_board.sh. Under qemu-user the aarch64 interpreter cannot be exec'ed
# directly (no binfmt handler: "Exec format error"), yet TVM's RPC server starts its worker as
# [sys.executable, "-m", "tvm.exec.popen_worker"]. Point sys.executable at bin/python, which re-enters qemu.
import os
import sys

_wrapper = os.environ.get("EDGEMTL_BOARD_PYTHON")
if _wrapper:
    sys.executable = _wrapper
EOF
  rm -rf "$SYSROOT"; mv "$NEW" "$SYSROOT"
  echo "$PIN_HASH" > "$STAMP"
fi

# --- bin/ scripts (rewritten on every run; cheap) ---------------------------------------------------------------
mkdir -p "$BOARD/bin" "$BOARD/lib"
cp "$HERE/rpc_server.py" "$BOARD/lib/edgemtl_rpc_server.py"
cat > "$BOARD/bin/python" <<EOF
#!/bin/sh
# The emulated board's Python 3.11 (aarch64, under qemu-user). Generated by hw/arm64/make_emulated_board.sh.
BOARD="\$(cd "\$(dirname "\$0")/.." && pwd)"
export EDGEMTL_BOARD_PYTHON="\$BOARD/bin/python"
export QEMU_LD_PREFIX="\$BOARD/sysroot"
export EDGEMTL_EMULATED=1   # board-side code (ort_runner.py) labels what it measures as emulated
# qemu-user shows the host's /proc/cpuinfo (x86), on which ONNX Runtime's cpuinfo crashes (SIGSEGV at import).
# With -L, qemu opens sysroot/proc/cpuinfo instead when it exists: describe Cortex-A53 cores (the ZCU104's PS),
# as many as the host has (the /sys CPU lists still come from the host and must agree).
N="\$(getconf _NPROCESSORS_CONF)"
if [ "\$(grep -c '^processor' "\$BOARD/sysroot/proc/cpuinfo" 2>/dev/null)" != "\$N" ]; then
  mkdir -p "\$BOARD/sysroot/proc"
  i=0; while [ "\$i" -lt "\$N" ]; do
    printf 'processor\\t: %d\\nBogoMIPS\\t: 200.00\\nFeatures\\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\\nCPU implementer\\t: 0x41\\nCPU architecture: 8\\nCPU variant\\t: 0x0\\nCPU part\\t: 0xd03\\nCPU revision\\t: 4\\n\\n' "\$i"
    i=\$((i + 1))
  done > "\$BOARD/sysroot/proc/cpuinfo.\$\$" && mv "\$BOARD/sysroot/proc/cpuinfo.\$\$" "\$BOARD/sysroot/proc/cpuinfo"
fi
exec "$QEMU" -L "\$BOARD/sysroot" "\$BOARD/sysroot/usr/bin/python3.11" "\$@"
EOF
cat > "$BOARD/bin/rpc_server" <<EOF
#!/bin/sh
# TVM RPC server on the emulated board (EMULATED: its timings are not device latencies).
#   bin/rpc_server --tracker HOST:PORT --key KEY [--host 127.0.0.1] [--port 9090] [--preload FILE.py] ...
# Takes tvm.exec.rpc_server's options. Preloads ort_runner.py (the board-side ONNX Runtime runner) from
# \$EDGEMTL_ARM64_HW, else from the hw/arm64 folder this board was built from, when that file exists.
# TVM_USE_RUNTIME_LIB=1 (the default here) loads only TVM's runtime library, as a board needs: starting
# under emulation then takes seconds instead of a minute. Set TVM_USE_RUNTIME_LIB=0 to load the compiler too.
BOARD="\$(cd "\$(dirname "\$0")/.." && pwd)"
HW="\${EDGEMTL_ARM64_HW:-$HERE}"
PRELOAD=""
[ -f "\$HW/ort_runner.py" ] && PRELOAD="--preload \$HW/ort_runner.py"
export TVM_USE_RUNTIME_LIB="\${TVM_USE_RUNTIME_LIB:-1}"
exec "\$BOARD/bin/python" "\$BOARD/lib/edgemtl_rpc_server.py" \$PRELOAD "\$@"
EOF
chmod +x "$BOARD/bin/python" "$BOARD/bin/rpc_server"

# --- smoke check ---------------------------------------------------------------------------------------------------
log "smoke check: import tvm, numpy, onnxruntime on the emulated board"
TVM_USE_RUNTIME_LIB=1 "$BOARD/bin/python" -c \
  "import platform, numpy, onnxruntime, tvm; print('[emulated-arm64] board python', platform.machine(), platform.python_version(), 'tvm', tvm.__version__, 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)" >&2
log "done in $(( $(date +%s) - T0 )) s; $(du -sh "$BOARD" | cut -f1) in $BOARD (sysroot $(du -sh "$SYSROOT" | cut -f1))"
log "use: $BOARD/bin/rpc_server --tracker 127.0.0.1:9190 --key arm64-emu"
