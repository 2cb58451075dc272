"""Control commands: what ipvsadm sends the kernel, as plain values.

ServiceSpec and DestSpec mirror ip_vs_service_user_kern and
ip_vs_dest_user_kern; Command mirrors ipvsadm's ipvs_command_entry. The rule
grammar (lvs.rules) builds them, Engine.apply carries them out, and the
engine raises ConfigError with ipvsadm's text for what the kernel refuses.

Addresses are raw bytes, 4 for IPv4 and 16 for IPv6: their length is the
address family (a fwmark service's zero address says which family it is).
"""

from .flags import AF_INET, AF_INET6

# Command names, ipvsadm's CMD_* in words.
ADD_SERVICE = "add-service"      # -A
EDIT_SERVICE = "edit-service"    # -E
DEL_SERVICE = "del-service"      # -D
FLUSH = "flush"                  # -C
ADD_DEST = "add-dest"            # -a
EDIT_DEST = "edit-dest"          # -e
DEL_DEST = "del-dest"            # -d
ZERO = "zero"                    # -Z
SET_TIMEOUT = "set-timeout"      # --set


class ServiceSpec:
    """Identifies a service and carries its settings (-t/-u/-f, -s, -p, -M, -b, -o, --pe)."""

    __slots__ = ("protocol", "addr", "port", "fwmark", "sched_name", "flags",
                 "timeout", "netmask", "pe_name")

    def __init__(self, protocol=0, addr=b"\0\0\0\0", port=0, fwmark=0,
                 sched_name="wlc", flags=0, timeout=0, netmask=None,
                 pe_name=""):
        self.protocol = protocol    # 6 or 17; 0 for a fwmark service
        self.addr = addr            # 4 or 16 raw bytes
        self.port = port
        self.fwmark = fwmark
        self.sched_name = sched_name
        self.flags = flags          # IP_VS_SVC_F_*
        self.timeout = timeout      # persistence, seconds
        if netmask is None:         # IPv4: a host-order mask; IPv6: a prefix length
            netmask = 128 if len(addr) == 16 else 0xFFFFFFFF
        self.netmask = netmask
        self.pe_name = pe_name

    @property
    def af(self):
        return AF_INET6 if len(self.addr) == 16 else AF_INET

    @property
    def key(self):
        return service_key(self.protocol, self.addr, self.port, self.fwmark)


def service_key(protocol, addr, port, fwmark):
    """The services table's key: a fwmark service is found by mark and family
    (ip_vs_svc_fwm_hashkey), the others by protocol, address and port."""
    if fwmark:
        return ("f", fwmark, AF_INET6 if len(addr) == 16 else AF_INET)
    return (protocol, addr, port)


class DestSpec:
    """A real server's settings (-r, -g/-i/-m, -w, -x, -y, --tun-*)."""

    __slots__ = ("addr", "port", "conn_flags", "weight", "u_threshold",
                 "l_threshold", "tun_type", "tun_port", "tun_flags")

    def __init__(self, addr=b"\0\0\0\0", port=0, conn_flags=0x0003, weight=1,
                 u_threshold=0, l_threshold=0, tun_type=0, tun_port=0,
                 tun_flags=0):
        self.addr = addr              # its length is the family: it may differ from the service's for tunnels
        self.port = port
        self.conn_flags = conn_flags  # forwarding method, IP_VS_CONN_F_*; -g is the default
        self.weight = weight
        self.u_threshold = u_threshold
        self.l_threshold = l_threshold
        self.tun_type = tun_type
        self.tun_port = tun_port
        self.tun_flags = tun_flags


class Command:
    __slots__ = ("cmd", "svc", "dest", "timeouts")

    def __init__(self, cmd, svc=None, dest=None, timeouts=None):
        self.cmd = cmd
        self.svc = svc            # ServiceSpec, or None (e.g. -C, -Z without a service)
        self.dest = dest          # DestSpec for -a/-e/-d
        self.timeouts = timeouts  # (tcp, tcpfin, udp) seconds for --set; 0 keeps a value

    def __repr__(self):
        return "Command(%s)" % self.cmd
