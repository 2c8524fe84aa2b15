/// Golden fixtures (Tests/VirtGateCoreTests/Fixtures) the targets plan fuzzed input against.
public enum FixedInput {
    /// `network-default.xml`
    public static let defaultNetwork = #"""
    <hookData>
      <network>
        <name>default</name>
        <uuid>0f0b2c9a-4b4e-4a5e-9a6b-6c1f1f0c1a01</uuid>
        <forward mode='nat'>
          <nat>
            <port start='1024' end='65535'/>
          </nat>
        </forward>
        <bridge name='virbr0' stp='on' delay='0'/>
        <mac address='52:54:00:0a:0b:0c'/>
        <ip address='192.168.122.1' netmask='255.255.255.0'>
          <dhcp>
            <range start='192.168.122.2' end='192.168.122.254'/>
            <host mac='52:54:00:aa:bb:01' name='web' ip='192.168.122.10'/>
          </dhcp>
        </ip>
      </network>
    </hookData>
    """#
    /// `network-dual.xml`
    public static let dualNetwork = #"""
    <hookData>
      <network>
        <name>dual</name>
        <forward mode='nat'/>
        <bridge name='virbr6' stp='on' delay='0'/>
        <ip address='192.168.126.1' prefix='24'>
          <dhcp>
            <host mac='52:54:00:aa:bb:06' name='web6' ip='192.168.126.10'/>
          </dhcp>
        </ip>
        <ip family='ipv6' address='fd00:126::1' prefix='64'>
          <dhcp>
            <range start='fd00:126::100' end='fd00:126::1ff'/>
            <host name='web6' ip='fd00:126::10'/>
          </dhcp>
        </ip>
      </network>
    </hookData>
    """#
    /// `domain-web-start.xml`
    public static let webGuest = #"""
    <domain type='kvm' id='3'>
      <name>web</name>
      <uuid>6d7a1c4e-2f55-4d7b-9a55-0d8c5f0e7a10</uuid>
      <metadata>
        <vg:forwards xmlns:vg="urn:virtgate:forwards:1">
          <vg:forward proto="tcp" host-port="2222" guest-port="22"/>
          <vg:forward proto="tcp" host-port="8000-8009" guest-port="9000-9009" source="203.0.113.0/24 198.51.100.7/32"/>
          <vg:forward proto="udp" host-port="51820" host-address="198.51.100.10"/>
          <vg:forward proto="tcp" host-port="8443" guest-port="443" guest-address="192.168.122.50" mac="52:54:00:aa:bb:01"/>
          <vg:forward proto="sctp" host-port="3868"/>
          <vg:forward host-port="6000-6002"/>
        </vg:forwards>
      </metadata>
      <memory unit='KiB'>524288</memory>
      <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
      <devices>
        <emulator>/usr/bin/qemu-system-x86_64</emulator>
        <interface type='network'>
          <mac address='52:54:00:AA:BB:01'/>
          <source network='default' portid='8c1d3a2e-7e0e-4c55-a1c5-3b2d1e0f9a11' bridge='virbr0'/>
          <target dev='vnet0'/>
          <model type='virtio'/>
          <alias name='net0'/>
        </interface>
      </devices>
    </domain>
    """#
}
