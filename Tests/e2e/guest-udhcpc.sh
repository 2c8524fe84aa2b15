#!/bin/sh
# udhcpc event script of the e2e test guest: configure eth0 from the lease.
case $1 in
bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    if [ -n "$router" ]; then
        while route del default 2>/dev/null; do :; done
        for r in $router; do route add default gw "$r" dev "$interface"; break; done
    fi
    echo "vgt-guest: lease $ip on $interface (router $router)"
    ;;
deconfig)
    ifconfig "$interface" 0.0.0.0
    ;;
esac
exit 0
