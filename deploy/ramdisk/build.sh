#!/usr/bin/env bash
# Builds tetsu's deploy ramdisk (the mini-OS a bare-metal node network-boots to write its
# image or wipe its disk) from Debian packages, with no network access: the newest
# cloud kernel, busybox-static, our /init and the kernel modules it needs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$HERE/build"
KERNEL_VERSION=""
INSTALL_HINT="apt-get install linux-image-cloud-amd64 busybox-static cpio"

# Modules /init loads, in this order after their dependencies. Required: the virtio
# devices of QEMU guests (the lab's machines). Optional: disk and NIC drivers of physical
# machines, taken when the kernel has them as modules (built-in ones need nothing; the
# cloud kernel lacks ahci and the Intel NICs, a generic one given by --kernel-version has
# them). Each costs boot time under emulation (mlx5_core about 0.4 s), so cloud-only NICs
# (ena, gve, VFs) stay out.
REQUIRED_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    failover net_failover virtio_net virtio_blk)
OPTIONAL_MODULES=(virtio_scsi sd_mod ahci ata_piix nvme e1000 e1000e igb ixgbe mlx4_en mlx5_core)
MAX_TOTAL_BYTES=$((20 * 1024 * 1024))

usage() {
    cat <<USAGE
Usage: deploy/ramdisk/build.sh [--out DIR] [--kernel-version VERSION]

Builds the deploy ramdisk into DIR (default: deploy/ramdisk/build/):
  vmlinuz    a copy of /boot/vmlinuz-VERSION (default: the newest *-cloud-amd64)
  initramfs  gzip'd newc cpio: busybox-static, deploy/ramdisk/init as /init, the kernel
             modules for virtio (and real disks/NICs when the kernel has them as modules)
Both are links into DIR/current, a link to the newest build's folder (DIR/.build-*),
switched to a new build only once it is complete.
Needs: $INSTALL_HINT
USAGE
}

die() {
    echo "build.sh: error: $*" >&2
    exit 1
}

missing() {
    die "$1 not found. Install the packages the ramdisk is made of: $INSTALL_HINT"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT="$2"; shift 2 ;;
        --kernel-version) [[ $# -ge 2 ]] || die "--kernel-version needs a value"; KERNEL_VERSION="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

started=$(date +%s.%N)

# --- what the ramdisk is made of -------------------------------------------------------
if [[ -z "$KERNEL_VERSION" ]]; then
    newest=$(printf '%s\n' /boot/vmlinuz-*-cloud-amd64 | sort -V | tail -n 1)
    [[ -e "$newest" ]] || missing "a cloud kernel (/boot/vmlinuz-*-cloud-amd64)"
    KERNEL_VERSION="${newest#/boot/vmlinuz-}"
fi
VMLINUZ="/boot/vmlinuz-$KERNEL_VERSION"
MODULES_DIR="/lib/modules/$KERNEL_VERSION"
[[ -r "$VMLINUZ" ]] || missing "kernel $VMLINUZ"
[[ -r "$MODULES_DIR/modules.dep" ]] || missing "$MODULES_DIR/modules.dep"
[[ -x /bin/busybox ]] || missing "/bin/busybox"
# A dynamically linked busybox (Debian's plain "busybox" package) cannot run without libc.
if ldd /bin/busybox >/dev/null 2>&1; then
    missing "a statically linked /bin/busybox (this one is dynamic)"
fi
for tool in cpio gzip modinfo; do
    command -v "$tool" >/dev/null || missing "$tool"
done
applets=$(/bin/busybox --list)
for applet in sh nc wget udhcpc sha256sum timeout dd insmod poweroff mkfifo; do
    grep -qx "$applet" <<< "$applets" || die "/bin/busybox has no '$applet' applet"
done

# --- the file tree ------------------------------------------------------------------------
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc/tetsu,lib/modules}
cp /bin/busybox "$STAGE/bin/busybox"
# Every applet at the path busybox would install it to, so scripts find them on PATH.
while read -r applet; do
    [[ "$applet" == bin/busybox || -z "$applet" ]] && continue
    ln -sf /bin/busybox "$STAGE/$applet"
done < <(/bin/busybox --list-full)
install -m 0755 "$HERE/init" "$STAGE/init"
install -m 0755 "$HERE/udhcpc.script" "$STAGE/etc/tetsu/udhcpc.script"
echo "$KERNEL_VERSION" > "$STAGE/etc/tetsu/kernel"

# --- kernel modules, dependencies first -----------------------------------------------
declare -A seen=()
ORDER=()

# add_module NAME REQUIRED: appends NAME's dependencies, then NAME, to ORDER.
add_module() {
    local name="$1" required="$2" filename depends dep
    [[ -n "${seen[$name]:-}" ]] && return 0
    seen[$name]=1
    if ! filename=$(modinfo -k "$KERNEL_VERSION" -F filename "$name" 2>/dev/null); then
        [[ "$required" == yes ]] && die "kernel $KERNEL_VERSION has no module $name"
        return 0
    fi
    [[ "$filename" == "(builtin)" ]] && return 0
    depends=$(modinfo -k "$KERNEL_VERSION" -F depends "$name")
    for dep in ${depends//,/ }; do
        add_module "$dep" yes
    done
    case "$filename" in
        *.ko) cp "$filename" "$STAGE/lib/modules/$name.ko" ;;
        *.ko.xz) xz -dc "$filename" > "$STAGE/lib/modules/$name.ko" ;;
        *.ko.zst) zstd -qdc "$filename" > "$STAGE/lib/modules/$name.ko" ;;
        *.ko.gz) gzip -dc "$filename" > "$STAGE/lib/modules/$name.ko" ;;
        *) die "module $name: unknown file type $filename" ;;
    esac
    ORDER+=("$name")
}

for name in "${REQUIRED_MODULES[@]}"; do add_module "$name" yes; done
for name in "${OPTIONAL_MODULES[@]}"; do add_module "$name" no; done
printf '%s\n' "${ORDER[@]}" > "$STAGE/etc/tetsu/modules"

# --- the two files the boot server serves -------------------------------------------------
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Each build goes into a folder of its own next to the result; OUT/current is a link to the
# newest complete one and OUT/vmlinuz, OUT/initramfs are links through it. Replacing that
# one link (a rename) switches both files at once, so a reader never sees a kernel of one
# build with an initramfs of another, nor half of a file.
BUILD=$(mktemp -d "$OUT/.build-XXXXXXXX")
trap 'rm -rf "$STAGE" "$BUILD"' EXIT  # until it is the current build
chmod 0755 "$BUILD"
(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
    | gzip -6 -n > "$BUILD/initramfs"
cp "$VMLINUZ" "$BUILD/vmlinuz"

kernel_bytes=$(stat -c %s "$BUILD/vmlinuz")
initramfs_bytes=$(stat -c %s "$BUILD/initramfs")
total=$((kernel_bytes + initramfs_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
if [[ $total -gt $MAX_TOTAL_BYTES ]]; then
    # The build in use stays: nodes keep booting what worked.
    die "kernel + initramfs are $(mib "$total"), over the $(mib "$MAX_TOTAL_BYTES") budget"
fi

# replace_link TARGET NAME: makes OUT/NAME a link to TARGET by a rename (atomic).
replace_link() {
    local temporary
    temporary="$OUT/.$2.$(basename "$BUILD").tmp"
    ln -sfn "$1" "$temporary"
    mv -fT "$temporary" "$OUT/$2"
}
previous=$(readlink "$OUT/current" 2>/dev/null || true)
replace_link "$(basename "$BUILD")" current
trap 'rm -rf "$STAGE"' EXIT
for name in vmlinuz initramfs; do
    # Once per OUT (an earlier layout held the files themselves); a no-op afterwards.
    [[ "$(readlink "$OUT/$name" 2>/dev/null)" == "current/$name" ]] \
        || replace_link "current/$name" "$name"
done
# The build this one replaced (not every other: one may be in progress beside this one). A
# machine downloading from it holds its file open, and Linux keeps the data until then.
if [[ "$previous" == .build-* && "$previous" != "$(basename "$BUILD")" ]]; then
    rm -rf "${OUT:?}/$previous"
fi

elapsed=$(echo "$started $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')
echo "kernel     $KERNEL_VERSION"
echo "modules    ${#ORDER[@]}: ${ORDER[*]}"
echo "vmlinuz    $OUT/vmlinuz  $(mib "$kernel_bytes")"
echo "initramfs  $OUT/initramfs  $(mib "$initramfs_bytes")"
echo "total      $(mib "$total"), built in ${elapsed} s"
