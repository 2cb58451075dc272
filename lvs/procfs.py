"""The engine's state as the kernel's /proc/net/ip_vs* files (Linux 6.1), byte for byte.

Pure functions, engine -> text, one per file:

  ip_vs               ip_vs_info_seq_show      services and real servers
  ip_vs_stats         ip_vs_stats_show         the totals and rates, in hex
  ip_vs_stats_percpu  ip_vs_stats_percpu_show  per-CPU counters (a process is a CPU: row 0, and
                                               with --workers one row per worker)
  ip_vs_conn          ip_vs_conn_seq_show      connections and templates
  ip_vs_conn_sync     ip_vs_conn_sync_seq_show the same with their origin (LOCAL/SYNC)

The kernel's formats, as its seq_printf calls write them and as the real kernel wrote them
(tests/data/golden/procfs.json, recorded with the oracle VM):
- IPv4 addresses as 8 upper-case hex digits of the host-order word, ports as 4 hex digits;
  IPv6 addresses as %pI6: eight groups of four lower-case hex digits, never shortened, in
  brackets in ip_vs ("[2001:0db8:...:0200]:0050") and bare in ip_vs_conn (whose columns
  then no longer line up).
- Service lines: IPv4 "TCP  CB0071C8:0050 rr " + ("ops " or "") + " ", IPv6
  "TCP  [...]:0050 rr " (no "ops" even with -o: not in the source's format; not recorded),
  fwmark of either family "FWM  00000001 sh " + ("ops " or ""); then "persistent T MASK" or nothing, and the newline.
  So an IPv4 line ends in two spaces, "wlc  persistent" has two. T is in jiffies (HZ 250:
  -p 300 shows 75000); MASK is ntohl() of the stored word: IPv4 "FFFFFF00", an IPv6 prefix
  length byte-swapped (-M 64 shows 40000000, /128 80000000).
- Real servers "  -> ADDR:PORT      %-7s %-6d %-10d %-10d" (trailing spaces kept), in list
  order (newest first); services in the kernel's hash-table order (listing.
  kernel_service_order: keyed by the namespace's address, so it differs between boots;
  engine.svc_hash_salt, 0 unless set); connections in creation order (the kernel's is its
  randomly keyed hash table's).
- Connections "%-3s ADDR PORT ADDR PORT ADDR PORT %-11s %7u": protocol IP for a fwmark
  template, whose virtual address is the mark (00000002, or 0000:0003:0000:... for IPv6);
  templates show NONE or ASSURED; expiry in whole seconds (jiffies_delta_to_msecs / 1000).
  ip_vs_conn_sync adds the origin (%-6s: LOCAL, or SYNC for what a backup received, from
  the source: the recording has LOCAL only).
- ip_vs_stats: the totals since the last zeroing as of the last estimator tick (kstats -
  kstats0), then the decoded rates, %8X/%16X; ip_vs_stats_percpu: one row per CPU with its
  live counters, never zeroed, then "~" with the ip_vs_stats totals: after -Z the CPU rows go
  on counting while the "~" row and the rates start again from 0.
"""

import os

from .flags import (
    IP_VS_CONN_F_DROUTE, IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_LOCALNODE, IP_VS_CONN_F_SYNC,
    IP_VS_CONN_F_TUNNEL, IP_VS_SVC_F_ONEPACKET, IP_VS_SVC_F_PERSISTENT,
)
from .listing import DEFAULT_CONN_TAB_SIZE, IPVS_VERSION, expire_seconds, int32, kernel_service_order, proto_name
from .tables import HZ

FILES = ("ip_vs", "ip_vs_stats", "ip_vs_stats_percpu", "ip_vs_conn", "ip_vs_conn_sync")


def hex_addr(addr):
    """%08X of ntohl(ip) for IPv4; %pI6 (full, lower case, no brackets) for IPv6."""
    if len(addr) == 16:
        h = addr.hex()
        return ":".join(h[i:i + 4] for i in range(0, 32, 4))
    return addr.hex().upper()


def kernel_fwd_name(conn_flags):
    """ip_vs_fwd_name: anything that is not local, tunnel or route is Masq."""
    return {IP_VS_CONN_F_LOCALNODE: "Local", IP_VS_CONN_F_TUNNEL: "Tunnel",
            IP_VS_CONN_F_DROUTE: "Route"}.get(conn_flags & IP_VS_CONN_F_FWD_MASK, "Masq")


def _bswap32(value):
    return int.from_bytes((value & 0xFFFFFFFF).to_bytes(4, "little"), "big")


def _netmask_word(svc):
    """ntohl(svc->netmask): IPv4's mask is kept in host order here; an IPv6 prefix length
    is stored by the kernel as the plain number in a __be32, which ntohl byte-swaps."""
    if len(svc.addr) == 16:
        return _bswap32(svc.netmask)
    return svc.netmask & 0xFFFFFFFF


def ip_vs(engine):
    """/proc/net/ip_vs."""
    out = ["IP Virtual Server version %s (size=%d)\n"
           % (IPVS_VERSION, getattr(engine, "conn_tab_size", DEFAULT_CONN_TAB_SIZE)),
           "Prot LocalAddress:Port Scheduler Flags\n",
           "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"]
    for svc in kernel_service_order(engine):
        sched = svc.sched_name or "none"
        ops = "ops " if svc.flags & IP_VS_SVC_F_ONEPACKET else ""
        if svc.fwmark:
            line = "FWM  %08X %s %s" % (svc.fwmark & 0xFFFFFFFF, sched, ops)
        elif len(svc.addr) == 16:
            line = "%s  [%s]:%04X %s " % (proto_name(svc.protocol), hex_addr(svc.addr), svc.port, sched)
        else:
            line = "%s  %s:%04X %s %s " % (proto_name(svc.protocol), hex_addr(svc.addr), svc.port,
                                           sched, ops)
        if svc.flags & IP_VS_SVC_F_PERSISTENT:
            line += "persistent %d %08X\n" % (int32(svc.timeout * HZ), _netmask_word(svc))
        else:
            line += "\n"
        out.append(line)
        for dest in svc.destinations:
            if len(dest.addr) == 16:
                head = "  -> [%s]:%04X" % (hex_addr(dest.addr), dest.port)
            else:
                head = "  -> %s:%04X" % (hex_addr(dest.addr), dest.port)
            out.append("%s      %-7s %-6d %-10d %-10d\n"
                       % (head, kernel_fwd_name(dest.conn_flags), int32(dest.weight),
                          int32(dest.activeconns), int32(dest.inactconns)))
    return "".join(out)


def _u64(values):
    return tuple(v & 0xFFFFFFFFFFFFFFFF for v in values)


def ip_vs_stats(engine):
    """/proc/net/ip_vs_stats."""
    st = engine.tot_stats
    shown = _u64(st.shown())
    rates = _u64(st.rates())
    return ("   Total Incoming Outgoing         Incoming         Outgoing\n"
            "   Conns  Packets  Packets            Bytes            Bytes\n"
            "%8X %8X %8X %16X %16X\n\n" % shown
            + " Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
            "%8X %8X %8X %16X %16X\n" % rates)


def ip_vs_stats_percpu(engine):
    """/proc/net/ip_vs_stats_percpu: a row of live counters per CPU; a process is one CPU
    (with --workers, the daemon is CPU 0 and its workers follow)."""
    st = engine.tot_stats
    live = _u64(st.counters())
    shown = _u64(st.shown())
    rates = _u64(st.rates())
    rows = [live] + [_u64(part["live"]) for part in engine.worker_parts]
    return ("       Total Incoming Outgoing         Incoming         Outgoing\n"
            "CPU    Conns  Packets  Packets            Bytes            Bytes\n"
            + "".join("%3X %8X %8X %8X %16X %16X\n" % ((cpu,) + row) for cpu, row in enumerate(rows))
            + "  ~ %8X %8X %8X %16X %16X\n\n" % shown
            + "     Conns/s   Pkts/s   Pkts/s          Bytes/s          Bytes/s\n"
            "    %8X %8X %8X %16X %16X\n" % rates)


def _conn_fields(engine, cp, now):
    return (proto_name(cp.protocol), hex_addr(cp.caddr), cp.cport, hex_addr(cp.vaddr), cp.vport,
            hex_addr(cp.daddr), cp.dport, engine.state_name(cp), expire_seconds(cp, now))


def ip_vs_conn(engine):
    """/proc/net/ip_vs_conn (what ipvsadm -Lc reads)."""
    out = ["Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"]
    now = engine.now
    for cp in engine.conn_list():
        f = _conn_fields(engine, cp, now)
        pe = ""
        pe_name, pe_data = getattr(cp, "pe_name", None), getattr(cp, "pe_data", None)
        if pe_name and pe_data:
            pe = " %s %s" % (pe_name, pe_data)
        out.append("%-3s %s %04X %s %04X %s %04X %-11s %7u%s\n" % (f + (pe,)))
    out.extend(part.get("conn", "") for part in engine.worker_parts)
    return "".join(out)


def ip_vs_conn_sync(engine):
    """/proc/net/ip_vs_conn_sync."""
    out = ["Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Origin Expires\n"]
    now = engine.now
    for cp in engine.conn_list():
        f = _conn_fields(engine, cp, now)
        origin = "SYNC" if cp.flags & IP_VS_CONN_F_SYNC else "LOCAL"
        out.append("%-3s %s %04X %s %04X %s %04X %-11s %-6s %7u\n" % (f[:8] + (origin, f[8])))
    out.extend(part.get("conn_sync", "") for part in engine.worker_parts)
    return "".join(out)


RENDER = {"ip_vs": ip_vs, "ip_vs_stats": ip_vs_stats, "ip_vs_stats_percpu": ip_vs_stats_percpu,
          "ip_vs_conn": ip_vs_conn, "ip_vs_conn_sync": ip_vs_conn_sync}


def render(engine):
    """Every file: {name: text}."""
    return {name: RENDER[name](engine) for name in FILES}


class ProcWriter:
    """Keeps DIR/net/<file> up to date: each rewritten atomically (a temporary file in the
    same folder, then rename), and only when its text changed; removed by close()."""

    def __init__(self, root):
        self.root = root
        self.net = os.path.join(root, "net")
        self.last = {}

    def open(self):
        os.makedirs(self.net, exist_ok=True)

    def write(self, engine):
        for name, text in render(engine).items():
            if self.last.get(name) == text:
                continue
            path = os.path.join(self.net, name)
            tmp = os.path.join(self.net, ".%s.tmp%d" % (name, os.getpid()))
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
            self.last[name] = text

    def close(self):
        for name in FILES:
            try:
                os.unlink(os.path.join(self.net, name))
            except OSError:
                pass
        self.last = {}
        try:
            os.rmdir(self.net)  # only if it is ours and empty
        except OSError:
            pass
