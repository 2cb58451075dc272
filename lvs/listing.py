"""ipvsadm's listings, byte for byte: -L/-l, --stats, --rate, --thresholds,
--persistent-conn, --tun-info, -c, --timeout, and -S (ipvsadm-save).

The formats are ipvsadm 1.31's printf formats (print_title,
print_service_entry, print_largenum, print_conn); the numbers are what the
kernel (6.1) would hand it over netlink or through /proc/net/ip_vs_conn.

Order: by default ipvsadm sorts services and real servers with qsort and
libipvs' ipvs_cmp_services / ipvs_cmp_dests (fwmark, af, protocol, address,
port; the differences taken in 32-bit int arithmetic, as in C); glibc's
qsort is a stable merge sort, reproduced here.  With sort=False (--nosort)
the kernel's order: services as ip_vs_genl_dump_services walks the two
256-bucket hash tables (ip_vs_svc_hashkey / ip_vs_svc_fwm_hashkey, newest
first in a bucket), real servers in list order (newest first).

IPv6 as ipvsadm prints it: "[addr]:port" (inet_ntop's text), an IPv6
fwmark service as "FWM  N IPv6" / "-f N -6", a persistence mask as the
prefix length (none for 128); the 33- and 28-column cuts of the service
and real-server names apply to IPv4 names only, so long IPv6 names push
the columns after them along.  The sort puts IPv4 services first and
compares IPv6 addresses word by word, each difference a C int.
"""

import math
import socket
import struct

from .errors import ConfigError
from .flags import (
    AF_INET, AF_INET6, IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_LOCALNODE,
    IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL, IP_VS_SVC_F_ONEPACKET,
    IP_VS_SVC_F_PERSISTENT, IP_VS_SVC_F_SCHED1, IP_VS_SVC_F_SCHED2,
    IP_VS_SVC_F_SCHED3,
)

IPVS_VERSION = "1.2.1"
DEFAULT_CONN_TAB_SIZE = 4096
IP_VS_SVC_TAB_BITS = 8
IP_VS_SVC_TAB_MASK = (1 << IP_VS_SVC_TAB_BITS) - 1

IPPROTO_IP = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

FORMATS = ("default", "stats", "rate", "thresholds", "persistent-conn", "tun-info")

TUN_NAMES = ("ipip", "gue", "gre")
TUN_FLAGS_SHORT = ("-c", "+c", "r+c")
TUN_FLAG_OPTS = ("--tun-nocsum", "--tun-csum", "--tun-remcsum")

SCHED_FLAGS = IP_VS_SVC_F_SCHED1 | IP_VS_SVC_F_SCHED2 | IP_VS_SVC_F_SCHED3


# ---------------------------------------------------------------- names

def _proto_service_name(protocol):
    return {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_SCTP: "sctp"}.get(protocol)


def port_to_anyname(port, protocol):
    """getservbyport for TCP/UDP/SCTP, else the number."""
    proto = _proto_service_name(protocol)
    if proto is not None:
        try:
            return socket.getservbyport(port, proto)
        except (OSError, OverflowError, ValueError):
            pass
    return "%u" % port


def addr_text(addr):
    """inet_ntop of a 4- or 16-byte address (glibc's text: "::ffff:192.0.2.1")."""
    return socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr)


def addr_to_anyname(addr):
    """gethostbyaddr's h_name, else inet_ntop's text."""
    text = addr_text(addr)
    try:
        return socket.gethostbyaddr(text)[0]
    except (OSError, ValueError, UnicodeError):
        return text


def addrport_to_anyname(addr, port, protocol, numeric):
    """host:port, an IPv6 host in brackets ("[2001:db8::1]:80"); ipvsadm's
    60-byte buffer keeps 59 characters."""
    host = addr_text(addr) if numeric else addr_to_anyname(addr)
    if len(addr) == 16:
        host = "[%s]" % host
    service = "%u" % port if numeric else port_to_anyname(port, protocol)
    return ("%s:%s" % (host, service))[:59]


def _protocol_name(protocol):
    """ipvsadm's protocol_name: None for what it does not know."""
    return {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP"}.get(protocol)


def _protocol_option(protocol):
    return {IPPROTO_TCP: "-t", IPPROTO_UDP: "-u",
            IPPROTO_SCTP: "--sctp-service"}.get(protocol)


def _c_str(value):
    """printf's %s of a char * that may be NULL (glibc prints "(null)")."""
    return "(null)" if value is None else value


def fwd_name(conn_flags):
    return {IP_VS_CONN_F_MASQ: "Masq", IP_VS_CONN_F_LOCALNODE: "Local",
            IP_VS_CONN_F_TUNNEL: "Tunnel",
            IP_VS_CONN_F_DROUTE: "Route"}.get(conn_flags & IP_VS_CONN_F_FWD_MASK)


def _fwd_switch(conn_flags):
    return {IP_VS_CONN_F_MASQ: "-m", IP_VS_CONN_F_TUNNEL: "-i",
            IP_VS_CONN_F_LOCALNODE: "-g",
            IP_VS_CONN_F_DROUTE: "-g"}.get(conn_flags & IP_VS_CONN_F_FWD_MASK)


def _dotted(netmask):
    return socket.inet_ntoa(struct.pack("!I", netmask & 0xFFFFFFFF))


def int32(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _u32(value):
    return value & 0xFFFFFFFF


def _tun_flag(table, flags):
    return table[flags] if 0 <= flags < len(table) else "(null)"


# ---------------------------------------------------------------- numbers

def print_largenum(value, exact=False):
    """ipvsadm's print_largenum: 9 columns, K/M/G/T above 100 million."""
    i = value & 0xFFFFFFFFFFFFFFFF
    if exact:
        text = "%d" % i
        width = 9 if len(text) <= 8 else len(text) + 1
        return text.rjust(width)
    if i < 100000000:                 # less than 100 million
        return "%9d" % i
    if i < 1000000000:                # less than 1 billion
        return "%8dK" % (i // 1000)
    if i < 100000000000:              # less than 100 billion
        return "%8dM" % (i // 1000000)
    if i < 100000000000000:           # less than 100 trillion
        return "%8dG" % (i // 1000000000)
    return "%8dT" % (i // 1000000000000)


# ---------------------------------------------------------------- order

def _msort(items, cmp):
    """glibc's qsort (msort_with_tmp): top-down, stable merge sort."""
    n = len(items)
    if n <= 1:
        return list(items)
    n1 = n // 2
    b1 = _msort(items[:n1], cmp)
    b2 = _msort(items[n1:], cmp)
    out = []
    i = j = 0
    while i < len(b1) and j < len(b2):
        if cmp(b1[i], b2[j]) <= 0:
            out.append(b1[i])
            i += 1
        else:
            out.append(b2[j])
            j += 1
    out.extend(b1[i:])
    out.extend(b2[j:])
    return out


def _addr_int(addr):
    return struct.unpack("!I", addr[:4])[0]


def _words(addr):
    """union nf_inet_addr as four host-order words (an IPv4 address, then zeros)."""
    return struct.unpack("!4I", addr + bytes(16 - len(addr)))


def _cmp_addrs(a1, a2):
    """The address part of libipvs' comparisons: a1's family decides; IPv6 word
    by word, IPv4 the first word; each difference taken as a C int."""
    if len(a1) != 16:
        return int32(_addr_int(a1) - _words(a2)[0])
    for w1, w2 in zip(_words(a1), _words(a2)):
        r = int32(w1 - w2)
        if r:
            return r
    return 0


def _af(addr):
    return AF_INET6 if len(addr) == 16 else AF_INET


def _cmp_services(s1, s2):
    """libipvs ipvs_cmp_services: fwmark, af (IPv4 first), protocol, address, port."""
    r = int32(s1.fwmark - s2.fwmark)
    if r:
        return r
    r = _af(s1.addr) - _af(s2.addr)
    if r:
        return r
    r = listed_protocol(s1) - listed_protocol(s2)
    if r:
        return r
    r = _cmp_addrs(s1.addr, s2.addr)
    if r:
        return r
    return s1.port - s2.port


def _cmp_dests(d1, d2):
    """libipvs ipvs_cmp_dests (mixed families: d1's decides how far to compare)."""
    r = _cmp_addrs(d1.addr, d2.addr)
    if r:
        return r
    return d1.port - d2.port


def listed_protocol(svc):
    # Over netlink a fwmark service has no protocol, address or port.
    return 0 if svc.fwmark else svc.protocol


def svc_hashkey(protocol, addr, port, salt=0):
    """ip_vs_svc_hashkey (an IPv6 address folded to one word by XOR); salt is
    ((size_t) ipvs >> 8), unknowable, 0 here."""
    fold = 0
    for word in _words(addr) if len(addr) == 16 else (_addr_int(addr),):
        fold ^= word
    ahash = fold ^ salt
    return (protocol ^ ahash ^ (port >> IP_VS_SVC_TAB_BITS) ^ port) & IP_VS_SVC_TAB_MASK


def svc_fwm_hashkey(fwmark, salt=0):
    return (salt ^ fwmark) & IP_VS_SVC_TAB_MASK


def kernel_service_order(engine):
    """Services in the order the kernel dumps them (ip_vs_genl_dump_services)."""
    salt = getattr(engine, "svc_hash_salt", 0)
    table = [[] for _ in range(IP_VS_SVC_TAB_MASK + 1)]
    fwm_table = [[] for _ in range(IP_VS_SVC_TAB_MASK + 1)]
    for svc in engine.services.values():  # creation order; hlist_add_head
        if svc.fwmark:
            fwm_table[svc_fwm_hashkey(svc.fwmark, salt)].insert(0, svc)
        else:
            table[svc_hashkey(svc.protocol, svc.addr, svc.port, salt)].insert(0, svc)
    return [svc for bucket in table for svc in bucket] + \
        [svc for bucket in fwm_table for svc in bucket]


def listed_services(engine, sort):
    if sort:
        return _msort(list(engine.services.values()), _cmp_services)
    return kernel_service_order(engine)


def listed_dests(svc, sort):
    if sort:
        return _msort(list(svc.destinations), _cmp_dests)
    return list(svc.destinations)


# ---------------------------------------------------------------- services

def _title(fmt):
    if fmt == "stats":
        return ("%-33s %8s %8s %8s %8s %8s\n  -> RemoteAddress:Port\n"
                % ("Prot LocalAddress:Port", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"))
    if fmt == "rate":
        return ("%-33s %8s %8s %8s %8s %8s\n  -> RemoteAddress:Port\n"
                % ("Prot LocalAddress:Port", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"))
    if fmt == "thresholds":
        return ("%-33s %-10s %-10s %-10s %-10s\n  -> RemoteAddress:Port\n"
                % ("Prot LocalAddress:Port", "Uthreshold", "Lthreshold", "ActiveConn",
                   "InActConn"))
    if fmt == "persistent-conn":
        return ("%-33s %-9s %-11s %-10s %-10s\n  -> RemoteAddress:Port\n"
                % ("Prot LocalAddress:Port", "Weight", "PersistConn", "ActiveConn",
                   "InActConn"))
    if fmt == "tun-info":
        return ("Prot LocalAddress:Port Scheduler Flags\n"
                "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn"
                " InActConn\n")
    return ("Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")


def sched_flags_text(svc):
    """print_sched_flags: the flag names that mean something for the scheduler."""
    names = []
    flags = svc.flags
    if svc.sched_name == "sh":
        if flags & IP_VS_SVC_F_SCHED1:
            names.append("sh-fallback")
        if flags & IP_VS_SVC_F_SCHED2:
            names.append("sh-port")
    elif svc.sched_name == "mh":
        if flags & IP_VS_SVC_F_SCHED1:
            names.append("mh-fallback")
        if flags & IP_VS_SVC_F_SCHED2:
            names.append("mh-port")
    else:
        if flags & IP_VS_SVC_F_SCHED1:
            names.append("flag-1")
        if flags & IP_VS_SVC_F_SCHED2:
            names.append("flag-2")
        if flags & IP_VS_SVC_F_SCHED3:
            names.append("flag-3")
    return ",".join(names)


def service_name(svc, numeric, rule):
    ipv6 = len(svc.addr) == 16
    if svc.fwmark:
        mark = int32(svc.fwmark)  # printed with %d
        if rule:
            return ("-f %d -6" if ipv6 else "-f %d") % mark
        return ("FWM  %d IPv6" if ipv6 else "FWM  %d") % mark
    vname = addrport_to_anyname(svc.addr, svc.port, svc.protocol, numeric)
    if rule:
        return "%s %s" % (_protocol_option(svc.protocol) or "--xxx-service", vname)
    name = "%-4s %s" % (_c_str(_protocol_name(svc.protocol)), vname)
    return name if ipv6 else name[:33]  # svc_name[33] = '\0' for IPv4 only


def _mask_text(svc, option):
    """" mask M" / " -M M" of a persistent service: IPv4's a dotted mask unless
    /32, IPv6's a prefix length unless 128."""
    if len(svc.addr) == 16:
        if svc.netmask != 128:
            return " %s %d" % (option, int32(svc.netmask))
    elif _u32(svc.netmask) != 0xFFFFFFFF:
        return " %s %s" % (option, _dotted(svc.netmask))
    return ""


def _tun_info(dest):
    if dest.fwd != IP_VS_CONN_F_TUNNEL:
        return None
    if dest.tun_type == 0:
        return "ipip"
    if dest.tun_type == 1:
        return ("gue:%d:%s" % (dest.tun_port, _tun_flag(TUN_FLAGS_SHORT, dest.tun_flags)))[:15]
    if dest.tun_type == 2:
        return ("gre:%s" % _tun_flag(TUN_FLAGS_SHORT, dest.tun_flags))[:15]
    return None


def _svc_counters(stats):
    """A service's counters as ipvsadm 1.31 prints them: the 64-bit ones
    (IPVS_SVC_ATTR_STATS64) since the last zeroing."""
    return tuple(c & 0xFFFFFFFFFFFFFFFF for c in stats.shown())


def _dest_counters(stats):
    """A real server's counters: libipvs reads the 32-bit IPVS_DEST_ATTR_STATS
    (conns and packets u32, bytes u64)."""
    conns, inpkts, outpkts, inbytes, outbytes = stats.shown()
    return (_u32(conns), _u32(inpkts), _u32(outpkts), inbytes, outbytes)


def _service_entry(svc, fmt, numeric, exact, sort, out):
    name = service_name(svc, numeric, rule=False)
    if fmt == "stats":
        line = "%-33s" % name + "".join(print_largenum(v, exact)
                                        for v in _svc_counters(svc.stats))
    elif fmt == "rate":
        line = "%-33s" % name + "".join(print_largenum(v, exact) for v in svc.stats.rates())
    else:
        line = "%s %s" % (name, svc.sched_name)
        if svc.flags & SCHED_FLAGS:
            line += " (%s)" % sched_flags_text(svc)
        if svc.flags & IP_VS_SVC_F_PERSISTENT:
            line += " persistent %u" % _u32(svc.timeout)
            line += _mask_text(svc, "mask")
            if svc.pe_name:
                line += " pe %s" % svc.pe_name
        if svc.flags & IP_VS_SVC_F_ONEPACKET:
            line += " ops"
    out.append(line + "\n")

    for dest in listed_dests(svc, sort):
        dname = addrport_to_anyname(dest.addr, dest.port, listed_protocol(svc), numeric)
        if len(dest.addr) != 16:
            dname = dname[:28]  # dname[28] = '\0', for IPv4 only
        if fmt == "stats":
            out.append("  -> %-28s" % dname
                       + "".join(print_largenum(v, exact) for v in _dest_counters(dest.stats))
                       + "\n")
        elif fmt == "rate":
            cps, inpps, outpps, inbps, outbps = (_u32(v) for v in dest.stats.rates())
            out.append("  -> %-28s %8d %8d %8d" % (dname, cps, inpps, outpps)
                       + print_largenum(inbps, exact) + print_largenum(outbps, exact) + "\n")
        elif fmt == "thresholds":
            out.append("  -> %-28s %-10u %-10u %-10u %-10u\n"
                       % (dname, _u32(dest.u_threshold), _u32(dest.l_threshold),
                          _u32(dest.activeconns), _u32(dest.inactconns)))
        elif fmt == "persistent-conn":
            out.append("  -> %-28s %-9u %-11u %-10u %-10u\n"
                       % (dname, _u32(dest.weight), _u32(dest.persistconns),
                          _u32(dest.activeconns), _u32(dest.inactconns)))
        elif fmt == "tun-info":
            info = _tun_info(dest)
            out.append("  -> %-28s %-7s %-13s %-6d %-10u %-10u\n"
                       % (dname, _c_str(fwd_name(dest.conn_flags)),
                          info if info is not None else "n/a", int32(dest.weight),
                          _u32(dest.activeconns), _u32(dest.inactconns)))
        else:
            out.append("  -> %-28s %-7s %-6d %-10u %-10u\n"
                       % (dname, _c_str(fwd_name(dest.conn_flags)), int32(dest.weight),
                          _u32(dest.activeconns), _u32(dest.inactconns)))


def list_services(engine, numeric=True, fmt="default", exact=False, sort=True,
                  service_key=None, header=True):
    """`ipvsadm -L[n]` and its variants.

    fmt: one of FORMATS.  service_key: list that one service only (ipvsadm
    -L -t/-u/-f ...), without the version line; ConfigError("No such
    service", 1) if it does not exist.  header=False leaves out the version
    line of a full listing.
    """
    if fmt not in FORMATS:
        raise ValueError("unknown listing format %r" % (fmt,))
    out = []
    if service_key is not None:
        svc = engine.services.get(service_key)
        if svc is None:
            raise ConfigError("No such service", 1)
        out.append(_title(fmt))
        _service_entry(svc, fmt, numeric, exact, sort, out)
        return "".join(out)
    if header:
        out.append("IP Virtual Server version %s (size=%d)\n"
                   % (IPVS_VERSION, getattr(engine, "conn_tab_size", DEFAULT_CONN_TAB_SIZE)))
    out.append(_title(fmt))
    for svc in listed_services(engine, sort):
        _service_entry(svc, fmt, numeric, exact, sort, out)
    return "".join(out)


def rule_lines(engine, numeric=True, sort=True):
    """ipvsadm -S [-n]: the rules as lines (without newlines)."""
    lines = []
    for svc in listed_services(engine, sort):
        name = service_name(svc, numeric, rule=True)
        line = "-A %s -s %s" % (name, svc.sched_name)
        if svc.flags & IP_VS_SVC_F_PERSISTENT:
            line += " -p %u" % _u32(svc.timeout)
            line += _mask_text(svc, "-M")
        if svc.pe_name:
            line += " --pe %s" % svc.pe_name
        if svc.flags & IP_VS_SVC_F_ONEPACKET:
            line += " -o"
        if svc.flags & SCHED_FLAGS:
            line += " -b " + sched_flags_text(svc)
        lines.append(line)
        for dest in listed_dests(svc, sort):
            dname = addrport_to_anyname(dest.addr, dest.port, listed_protocol(svc), numeric)
            head = "-a %s -r %s %s -w %d" % (name, dname, _c_str(_fwd_switch(dest.conn_flags)),
                                             int32(dest.weight))
            if dest.fwd == IP_VS_CONN_F_TUNNEL:
                if dest.tun_type == 2:
                    head += " --tun-type gre %s" % _tun_flag(TUN_FLAG_OPTS, dest.tun_flags)
                elif dest.tun_type == 1:
                    head += " --tun-type gue --tun-port %d %s" % (
                        dest.tun_port, _tun_flag(TUN_FLAG_OPTS, dest.tun_flags))
                elif dest.tun_type == 0:
                    head += " --tun-type ipip"
            lines.append(head)
    return lines


def save_lines(engine, numeric=True):
    return rule_lines(engine, numeric=numeric)


def list_timeouts(engine):
    tcp, tcpfin, udp = engine.timeouts()
    return "Timeout (tcp tcpfin udp): %d %d %d\n" % (tcp, tcpfin, udp)


# ---------------------------------------------------------------- connections

def proto_name(protocol):
    """The kernel's ip_vs_proto_name, as /proc/net/ip_vs_conn shows it."""
    names = {IPPROTO_IP: "IP", IPPROTO_UDP: "UDP", IPPROTO_TCP: "TCP",
             IPPROTO_SCTP: "SCTP", IPPROTO_ICMP: "ICMP"}
    return names.get(protocol, "IP_%u" % protocol)


def expire_seconds(conn, now):
    """jiffies_delta_to_msecs(expires - jiffies) / 1000: whole seconds left, never negative."""
    left = conn.expires - (now if now is not None else 0.0)
    if left <= 0:
        return 0
    return int(math.floor(left + 1e-9))


def list_connections(engine, numeric=True, persistent_conn=False):
    """`ipvsadm -Lc[n]` [--persistent-conn], connections in the given order."""
    out = ["IPVS connection entries\n"]
    if persistent_conn:
        out.append("pro expire %-11s %-18s %-18s %-18s %-16s %s\n"
                   % ("state", "source", "virtual", "destination", "pe name", "pe_data"))
    else:
        out.append("pro expire %-11s %-18s %-18s %s\n"
                   % ("state", "source", "virtual", "destination"))
    now = engine.now
    for conn in engine.conn_list():
        pname = proto_name(conn.protocol)
        proto = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}.get(pname, 0)
        cname = addrport_to_anyname(conn.caddr, conn.cport, proto, numeric)
        vname = addrport_to_anyname(conn.vaddr, conn.vport, proto, numeric)
        dname = addrport_to_anyname(conn.daddr, conn.dport, proto, numeric)
        expires = expire_seconds(conn, now)
        expire = "%02d:%02d" % (expires // 60, expires % 60)
        state = engine.state_name(conn)
        pe_name = getattr(conn, "pe_name", None)
        pe_data = getattr(conn, "pe_data", None)
        if persistent_conn and pe_name and pe_data:
            out.append("%-3s %-6s %-11s %-18s %-18s %-16s %-18s %s\n"
                       % (pname, expire, state, cname, vname, dname, pe_name, pe_data))
        else:
            out.append("%-3s %-6s %-11s %-18s %-18s %s\n"
                       % (pname, expire, state, cname, vname, dname))
    return "".join(out)
