/* libvirt's share of `virtgate sync`: the libvirt calls sync makes (Sources/VirtGateAdmin/LibvirtState.swift
 * through Sources/Libvirt), in the same order, and nothing else. Every active network's XML and DHCP leases;
 * every running guest's name and XML, and, when the networks' leases cannot be read (libvirt's test driver
 * has none), each guest's addresses from its leases.
 *
 * Prints "<guests> <lease lookups> <XML bytes>" so the bench can check that it really made every call.
 * Usage: libvirt-alone URI
 */
#include <libvirt/libvirt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s URI\n", argv[0]);
        return 2;
    }
    virConnectPtr connection = virConnectOpen(argv[1]);
    if (!connection) return 1;
    char *uri = virConnectGetURI(connection);
    free(uri);

    long bytes = 0;
    int leasesWork = 1;
    virNetworkPtr *networks = NULL;
    int networkCount = virConnectListAllNetworks(connection, &networks, VIR_CONNECT_LIST_NETWORKS_ACTIVE);
    if (networkCount < 0) return 1;
    for (int i = 0; i < networkCount; i++) {
        const char *name = virNetworkGetName(networks[i]);
        (void)name;
        char *xml = virNetworkGetXMLDesc(networks[i], 0);
        if (!xml) return 1;
        bytes += (long)strlen(xml);
        free(xml);
        virNetworkDHCPLeasePtr *leases = NULL;
        int count = virNetworkGetDHCPLeases(networks[i], NULL, &leases, 0);
        if (count < 0) {
            leasesWork = 0;
        } else {
            for (int j = 0; j < count; j++) virNetworkDHCPLeaseFree(leases[j]);
            free(leases);
        }
        virNetworkFree(networks[i]);
    }
    free(networks);

    virDomainPtr *domains = NULL;
    int domainCount = virConnectListAllDomains(connection, &domains, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (domainCount < 0) return 1;
    int lookups = 0;
    for (int i = 0; i < domainCount; i++) {
        const char *name = virDomainGetName(domains[i]);
        (void)name;
        char *xml = virDomainGetXMLDesc(domains[i], 0);
        if (!xml) return 1;
        bytes += (long)strlen(xml);
        /* sync asks only for guests with forwards; every guest of the bench's node files has them. */
        int forwards = strstr(xml, "urn:virtgate:forwards:1") != NULL;
        free(xml);
        if (!leasesWork && forwards) {
            virDomainInterfacePtr *interfaces = NULL;
            int count = virDomainInterfaceAddresses(domains[i], &interfaces, VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0);
            if (count < 0) return 1;
            for (int j = 0; j < count; j++) virDomainInterfaceFree(interfaces[j]);
            free(interfaces);
            lookups++;
        }
        virDomainFree(domains[i]);
    }
    free(domains);
    virConnectClose(connection);
    printf("%d %d %ld\n", domainCount, lookups, bytes);
    return 0;
}
