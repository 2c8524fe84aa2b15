#!/bin/sh
# guest-init.sh: /init of the e2e test guest (busybox + socat in an initramfs, Debian's cloud kernel).
#
# Kernel command line: vgname=NAME (the label every service answers with). The guest:
#   1. loads the virtio network modules (listed in /modules/order, dependency order);
#   2. takes its address by DHCP (udhcpc, hostname NAME) from libvirt's dnsmasq;
#   3. serves, each answering one line "NAME PORT PEER-ADDRESS" and closing:
#        tcp 22, 80, 443, 5000, 9000-9002 and udp 6000;
#   4. serves tcp 7000: a shell for the test driver on the host (runs the lines it reads, then closes), so
#      the suite can make the guest connect out (egress, hairpin). Only the host reaches it: it is on the
#      guest's own address and nothing forwards it.
# Everything is printed on the serial console (ttyS0), which libvirt writes to a file.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
NAME=guest
for w in $(cat /proc/cmdline); do
    case $w in vgname=*) NAME=${w#vgname=} ;; esac
done
echo "vgt-guest $NAME: init at $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" || echo "vgt-guest $NAME: insmod $m failed"
done
hostname "$NAME"
ip link set lo up
ip link set eth0 up || { echo "vgt-guest $NAME: no eth0"; ls /sys/class/net; }
udhcpc -i eth0 -s /udhcpc.sh -x "hostname:$NAME" -t 60 -T 1 -A 1 -q -n || echo "vgt-guest $NAME: no DHCP lease"
ip -4 addr show dev eth0
ip route
serve_tcp() {
    socat "TCP-LISTEN:$1,fork,reuseaddr" SYSTEM:"echo $NAME $1 \$SOCAT_PEERADDR" </dev/null &
}
for p in 22 80 443 5000 9000 9001 9002; do serve_tcp "$p"; done
socat UDP-RECVFROM:6000,fork SYSTEM:"echo $NAME 6000 \$SOCAT_PEERADDR" </dev/null &
socat TCP-LISTEN:7000,fork,reuseaddr EXEC:/bin/sh,stderr </dev/null &
sleep 0.2
echo "vgt-guest $NAME: ready at $(cut -d' ' -f1 /proc/uptime)s"
while :; do sleep 3600; done
