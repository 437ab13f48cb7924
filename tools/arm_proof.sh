#!/usr/bin/env bash
# The ARM proof: run `lkca-runtime verify BUNDLE --all --json` on emulated aarch64 CPUs, with the real PyPI
# aarch64 wheels of numpy, pillow, onnxruntime and openvino, and write one JSON per CPU plus a Markdown table.
#
# Usage (as root, on a Debian/Ubuntu x86 host that reaches Debian's mirror and PyPI):
#   apt-get install -y mmdebstrap qemu-user-static binfmt-support
#   tools/arm_proof.sh BUNDLE OUT_DIR            # builds the arm64 root once (25 min on a busy 2-core host), then verifies per CPU
#   tools/arm_proof.sh --root-only               # only build (or refresh) the cached root
# Environment: ARM_ROOT (the cached root, default /var/tmp/lkca-arm-root), ARM_SUITE (default bookworm),
#   ARM_CPUS (QEMU CPU models, default "neoverse-n1 cortex-a72"), ARM_EXTRAS (default "onnxruntime,openvino").
# Writes OUT_DIR/verify-<cpu>.json (verify's JSON, also when it exits 1), OUT_DIR/verify-<cpu>.stderr,
# OUT_DIR/cpuinfo-<cpu> (the /proc/cpuinfo the run saw), OUT_DIR/versions.txt and OUT_DIR/table.md.
#
# Why each step:
# - qemu-user runs the chroot's aarch64 binaries (binfmt with the F flag, so the interpreter works inside it);
#   QEMU_CPU picks the emulated CPU, so the kernel features the wheels detect (AT_HWCAP) are that CPU's.
# - Under qemu-user, /proc/cpuinfo is the x86 host's: onnxruntime's cpuinfo library finds no ARM core in it and
#   segfaults at import (qemu 7.2), and the runtime's fingerprint would be empty. Each run bind-mounts an ARM
#   cpuinfo whose Features line is decoded from the emulated CPU's own AT_HWCAP/AT_HWCAP2 and whose
#   implementer/part are that CPU's MIDR fields.
# - pip inside the chroot must trust what the host trusts (a TLS-inspecting proxy): the host's CA bundle is
#   copied in and named by PIP_CERT.
# - Mounts live in a private mount namespace (unshare -m): they vanish when the run ends, even when killed.
set -euo pipefail

ARM_ROOT=${ARM_ROOT:-/var/tmp/lkca-arm-root}
ARM_SUITE=${ARM_SUITE:-bookworm}
ARM_CPUS=${ARM_CPUS:-"neoverse-n1 cortex-a72"}
ARM_EXTRAS=${ARM_EXTRAS:-onnxruntime,openvino}
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
VENV=/opt/lkca-venv
READY="$ARM_ROOT/.lkca-root-ready"
here="$(cd "$(dirname "$0")/.." && pwd)"

die() { echo "arm_proof: $*" >&2; exit 2; }

root_only=0
if [[ "${1:-}" == "--root-only" ]]; then root_only=1; shift; fi
if [[ $root_only == 0 ]]; then
    [[ $# == 2 ]] || die "usage: $0 BUNDLE OUT_DIR  |  $0 --root-only"
    bundle="$(cd "$1" 2>/dev/null && pwd)" || die "no bundle folder: $1"
    [[ -f "$bundle/manifest.json" ]] || die "not a bundle (no manifest.json): $bundle"
    mkdir -p "$2" && out="$(cd "$2" && pwd)"
fi
[[ $(id -u) == 0 ]] || die "run as root (mmdebstrap, chroot and mounts need it)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing: apt-get install -y mmdebstrap"
command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static missing: apt-get install -y qemu-user-static"
[[ -f "$HOST_CA" ]] || die "no CA bundle at $HOST_CA (set HOST_CA)"

# binfmt: mount its file system where a container has none, and enable qemu-aarch64.
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    update-binfmts --enable qemu-aarch64 || die "cannot enable qemu-aarch64 in binfmt_misc"
fi
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || die "qemu-aarch64's binfmt entry lacks the F flag: the chroot could not find its interpreter"

# in_root CPU COMMAND...: run COMMAND in the root, emulating CPU, with /proc, /sys, /dev, the host's CA bundle
# and (when CPUINFO is set) an ARM /proc/cpuinfo mounted; extra bind mounts come from BIND="src:dst ...".
in_root() {
    local cpu=$1; shift
    unshare -m --propagation private env QEMU_CPU="$cpu" CPUINFO="${CPUINFO:-}" BIND="${BIND:-}" \
        ROOT="$ARM_ROOT" HOST_CA="$HOST_CA" bash -c '
        set -e
        mount -t proc proc "$ROOT/proc"
        mount --rbind /sys "$ROOT/sys"
        mount --rbind /dev "$ROOT/dev"
        install -D -m 644 "$HOST_CA" "$ROOT/etc/ssl/certs/host-ca.crt"
        if [[ -n "$CPUINFO" ]]; then mount --bind "$CPUINFO" "$ROOT/proc/cpuinfo"; fi
        for pair in $BIND; do mkdir -p "$ROOT${pair#*:}"; mount --bind "${pair%%:*}" "$ROOT${pair#*:}"; done
        # env -i clears the environment: QEMU_CPU must be named again, or every binary it starts runs as "max"
        exec chroot "$ROOT" /usr/bin/env -i QEMU_CPU="$QEMU_CPU" PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
            PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
    ' in_root "$@"
}

# The root: Debian arm64 with Python, a venv holding the runtime's dependencies and backends (cached).
if [[ ! -f "$READY" ]]; then
    echo "arm_proof: building the arm64 root at $ARM_ROOT (once; about 10 minutes)" >&2
    rm -rf "$ARM_ROOT"
    mmdebstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$ARM_SUITE" "$ARM_ROOT" http://deb.debian.org/debian
    in_root max python3 -m venv "$VENV"
    in_root max "$VENV/bin/pip" install --quiet --upgrade pip setuptools wheel
    # The backends' aarch64 wheels, installed before the runtime so that a later runtime install only adds itself.
    CPUINFO="" in_root max "$VENV/bin/pip" install --quiet numpy pillow onnxruntime openvino
    touch "$READY"
fi
[[ $root_only == 1 ]] && { echo "arm_proof: root ready at $ARM_ROOT" >&2; exit 0; }

# The runtime from this checkout, as a device user installs it.
[[ -d "$here/runtime" ]] || die "no runtime/ folder in $here"
rm -rf "$ARM_ROOT/src/runtime" && mkdir -p "$ARM_ROOT/src" && cp -r "$here/runtime" "$ARM_ROOT/src/runtime"
rm -rf "$ARM_ROOT/src/runtime/build" "$ARM_ROOT"/src/runtime/*.egg-info
# --no-build-isolation: the root's venv has setuptools, so building the runtime's wheel needs no download.
in_root max "$VENV/bin/pip" install --quiet --no-build-isolation --force-reinstall --no-deps "/src/runtime"
in_root max "$VENV/bin/pip" install --quiet --no-build-isolation "/src/runtime[$ARM_EXTRAS]"
in_root max "$VENV/bin/python" -c 'import platform; print("python", platform.python_version())' \
    > "$out/versions.txt"
in_root max "$VENV/bin/pip" list --format=freeze >> "$out/versions.txt"

# cpuinfo_for CPU: an ARM /proc/cpuinfo for the emulated CPU (Features from its AT_HWCAP/AT_HWCAP2).
cpuinfo_for() {
    local cpu=$1 midr
    case "$cpu" in
        neoverse-n1) midr="0x41 0x3 0xd0c 1" ;;
        cortex-a72) midr="0x41 0x0 0xd08 3" ;;
        cortex-a76) midr="0x41 0x4 0xd0b 1" ;;
        cortex-a57) midr="0x41 0x1 0xd07 1" ;;
        cortex-a53) midr="0x41 0x0 0xd03 4" ;;
        *) die "no MIDR known for QEMU CPU $cpu (add it to cpuinfo_for)" ;;
    esac
    CPUINFO="" in_root "$cpu" /usr/bin/python3 - "$(nproc)" $midr <<'PY'
import ctypes, sys
# Linux arch/arm64/include/uapi/asm/hwcap.h, in bit order.
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
         "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
          "svebf16 i8mm bf16 dgh rng bti mte").split()
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
libc.getauxval.argtypes = [ctypes.c_ulong]
hw, hw2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
features = [n for i, n in enumerate(HWCAP) if hw >> i & 1] + [n for i, n in enumerate(HWCAP2) if hw2 >> i & 1]
cores, implementer, variant, part, revision = int(sys.argv[1]), *sys.argv[2:]
for core in range(cores):
    print(f"processor\t: {core}\nBogoMIPS\t: 50.00\nFeatures\t: {' '.join(features)}\n"
          f"CPU implementer\t: {implementer}\nCPU architecture: 8\nCPU variant\t: {variant}\n"
          f"CPU part\t: {part}\nCPU revision\t: {revision}\n")
PY
}

status=0
for cpu in $ARM_CPUS; do
    echo "arm_proof: verify on $cpu" >&2
    cpuinfo_for "$cpu" > "$out/cpuinfo-$cpu"
    rc=0
    CPUINFO="$out/cpuinfo-$cpu" BIND="$bundle:/bundle" in_root "$cpu" "$VENV/bin/lkca-runtime" verify /bundle --all \
        --json > "$out/verify-$cpu.json" 2> "$out/verify-$cpu.stderr" || rc=$?
    echo "arm_proof: $cpu: exit $rc" >&2
    (( rc > status )) && status=$rc
done

# The table: one row per engine, one column per CPU.
python3 "$here/tools/verify_table.py" $(for cpu in $ARM_CPUS; do echo "$out/verify-$cpu.json"; done) \
    > "$out/table.md" || die "could not render the table from $out/verify-*.json"
cat "$out/table.md"
exit "$status"
