#!/bin/bash
# build-guest.sh CACHE_DIR: builds the e2e test guest into CACHE_DIR/guest/{vmlinuz,initrd.img} unless an
# up-to-date build is there already (the stamp covers this script, the guest's files, the kernel package and
# the socat binary). Prints one line saying what it did; exits non-zero on any error.
#
# Kernel: Debian's linux-image-*-cloud-amd64 (apt-get download, dpkg -x; nothing is installed). Initramfs:
# busybox-static, socat with the libraries it links, the virtio network modules, guest-init.sh as /init.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${1:?usage: build-guest.sh CACHE_DIR}
OUT=$CACHE/guest
DEBS=$CACHE/debs
# In dependency order: insmod does not resolve dependencies.
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net"

for t in apt-get apt-cache dpkg cpio gzip ldd sha256sum; do
    command -v "$t" >/dev/null || { echo "build-guest: missing tool $t" >&2; exit 1; }
done
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 && /bin/busybox --list | grep -qx udhcpc \
    || { echo "build-guest: no static /bin/busybox with udhcpc (install busybox-static)" >&2; exit 1; }
[ -x /usr/bin/socat ] || { echo "build-guest: /usr/bin/socat missing" >&2; exit 1; }

mkdir -p "$OUT" "$DEBS"
# The kernel package the metapackage points to now; a cached .deb of any cloud kernel is used when apt
# knows none (offline).
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
deb=""
if [ -n "$pkg" ]; then
    deb=$(ls "$DEBS/${pkg}_"*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        (cd "$DEBS" && apt-get download -q "$pkg" >/dev/null 2>&1) \
            || { echo "build-guest: apt-get download $pkg failed (run apt-get update?)" >&2; exit 1; }
        deb=$(ls "$DEBS/${pkg}_"*.deb | head -n1)
    fi
else
    deb=$(ls "$DEBS"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n1 || true)
    [ -n "$deb" ] || { echo "build-guest: apt knows no linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
fi

stamp=$( { sha256sum "$HERE/build-guest.sh" "$HERE/guest-init.sh" "$HERE/guest-udhcpc.sh" /usr/bin/socat \
    /bin/busybox | cut -d' ' -f1; basename "$deb"; } | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ]; then
    echo "guest: cached ($(basename "$deb"))"
    exit 0
fi

work=$(mktemp -d /tmp/vgt-e2e-guest.XXXXXX)
trap 'rm -rf "$work"' EXIT
dpkg -x "$deb" "$work/kernel"
kver=$(ls "$work/kernel/lib/modules" | head -n1)
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,etc,modules,tmp,lib/x86_64-linux-gnu,lib64}
cp /bin/busybox "$root/bin/busybox"
for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
done
cp /usr/bin/socat "$root/bin/socat"
# socat's shared libraries, at the paths the dynamic loader looks at
ldd /usr/bin/socat | awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | while read -r lib; do
    real=$(readlink -f "$lib")
    mkdir -p "$root$(dirname "$lib")"
    cp "$real" "$root$lib"
done
for m in $MODULES; do
    f=$(find "$work/kernel/lib/modules/$kver" -name "$m.ko" | head -n1)
    [ -n "$f" ] || { echo "build-guest: module $m.ko not in $(basename "$deb")" >&2; exit 1; }
    cp "$f" "$root/modules/"
done
echo "$MODULES" | tr ' ' '\n' >"$root/modules/order"
install -m 0755 "$HERE/guest-init.sh" "$root/init"
install -m 0755 "$HERE/guest-udhcpc.sh" "$root/udhcpc.sh"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/initrd.img.new"
cp "$work/kernel/boot/vmlinuz-$kver" "$OUT/vmlinuz.new"
mv -f "$OUT/initrd.img.new" "$OUT/initrd.img"
mv -f "$OUT/vmlinuz.new" "$OUT/vmlinuz"
echo "$stamp" >"$OUT/stamp"
echo "guest: built (kernel $kver, initramfs $(du -k "$OUT/initrd.img" | cut -f1) KiB)"
