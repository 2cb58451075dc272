"""`lvs sim` on a capture: trace-driven arrivals.

    lvs sim CAPTURE --rules RULES [--service PROTO:VIP:PORT] [--size BYTES] ...
    lvs sim WORKLOAD            (a workload file with capture = "PATH")

The capture is read as `lvs replay` reads it (lvs/pcap.py: pcap or pcapng;
Ethernet, VLAN, raw, SLL, SLL2; IPv4 and IPv6) and turned into the
connections of the simulation's one service; lvs/sim.py then drives those
exactly as it drives synthetic ones (the same packets through each
scheduler's engine, the same capacity model and outputs), so only the
clients' addresses and ports, the arrival times and the byte counts are the
capture's.

TCP: a connection starts with the client's SYN (no ACK) to VIP:PORT; one
seen while the client's previous connection from that address and port is
open is a retransmission. Its request is the client's payload bytes (1 to
65000: the simulation sends it as one packet); its response the payload bytes
from the server's side (VIP:PORT or a real server's ADDR:PORT, to the client's
address and port) where the capture has any, else a draw of the workload's
`connections.size` (`--size` on the command line). Its hold time is from the
end of the response (the server's last payload packet; without the server's
side, the client's last packet before its FIN, which acknowledges the
response) to the client's FIN or RST, or to the connection's last packet if
it never closes in the capture. Packets of connections whose SYN is not in
the capture are left out.

UDP: a flow is the datagrams between a client's address and port and
VIP:PORT, until a silence longer than IPVS's UDP timeout (300 s) starts a new
one. Its request is the client's payload bytes in it (1 to 65000), its
response the server side's, or a draw of `size` as above.

Times are seconds since the capture's earliest record (the clock of `lvs
replay`'s `@SECONDS` rule lines, so a rules file's timed lines keep their
meaning as events); the duration defaults to the capture's span, and a
workload's `duration` keeps only the connections that start before it.

With --rules, the rules are applied as `lvs replay` applies them (its
load_rules) to a scratch engine, and its one TCP or UDP service (--service
picks one of several) becomes the workload's: VIP, persistence, -M, the
scheduler's -b flags (for that scheduler), and each real server's address,
port, method, weight, -x and -y, with the default capacity model of
lvs/sim_workload.py. Timed `@SECONDS` lines become lvsadm events. Tunnel
types, --pe and -o are not carried over. The addresses are taken as the
capture and the rules have them (the documentation-range check is for
synthetic workloads).
"""

import ipaddress
import os
import random
import socket
import struct

from .errors import ConfigError
from .ipv6 import find_hdr
from .pcap import CaptureError, read_capture
from .sim_workload import SimError, Workload

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
MAX_REQUEST = 65000


class CapturedFlow:
    __slots__ = ("start", "order", "caddr", "cport", "request", "response", "response_end",
                 "client_last", "close", "last")

    def __init__(self, ts, order, caddr, cport):
        self.start = ts
        self.order = order
        self.caddr, self.cport = caddr, cport
        self.request = self.response = 0
        self.response_end = None    # the server side's last payload packet
        self.client_last = None     # the client's last packet but its SYN, FIN and RST
        self.close = None           # the client's FIN or RST
        self.last = ts              # the flow's last packet, either way


def _ports(kind, data):
    """(protocol, source, destination, L4 offset, L4 length) of an IP packet, or None
    for one that has no ports to read (short, a later fragment)."""
    if kind == "ipv4":
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        ihl = (data[0] & 15) << 2
        if ihl < 20 or ((data[6] << 8) | data[7]) & 0x1FFF:
            return None
        return data[9], data[12:16], data[16:20], ihl, ((data[2] << 8) | data[3]) - ihl
    if len(data) < 40 or data[0] >> 4 != 6:
        return None
    h = find_hdr(data)
    if h is None or h.fragoffs:
        return None
    return h.protocol, data[8:24], data[24:40], h.offset, 40 + ((data[4] << 8) | data[5]) - h.offset


def read_flows(path, protocol, vaddr, vport, server_keys):
    """The capture's connections to vaddr:vport (bytes, int) in start order, and
    what was read: {"records", "first", "last", "midstream"}."""
    from .engine import UDP_TIMEOUT
    tcp = protocol == "tcp"
    proto = 6 if tcp else 17
    servers = set(server_keys) | {(vaddr, vport)}
    unpack = struct.unpack_from
    open_flows, flows = {}, []
    first = last = None
    records = midstream = 0
    try:
        for ts, kind, data in read_capture(path):
            records += 1
            if first is None or ts < first:
                first = ts
            if last is None or ts > last:
                last = ts
            if kind != "ipv4" and kind != "ipv6":
                continue
            h = _ports(kind, data)
            if h is None or h[0] != proto:
                continue
            _, src, dst, off, l4len = h
            if len(data) < off + (14 if tcp else 8):
                continue
            sport, dport = unpack("!HH", data, off)
            if tcp:
                flags = data[off + 13]
                n = l4len - ((data[off + 12] >> 4) << 2)
            else:
                n = l4len - 8
            if dport == vport and dst == vaddr:
                key = (src, sport)
                f = open_flows.get(key)
                if tcp:
                    if flags & (SYN | ACK | RST) == SYN:
                        if f is None or f.close is not None:
                            f = open_flows[key] = CapturedFlow(ts, len(flows), src, sport)
                            flows.append(f)
                        continue
                    if f is None:
                        midstream += 1
                        continue
                    if ts > f.last:
                        f.last = ts
                    if f.close is not None:
                        continue
                    if n > 0:
                        f.request += n
                    if flags & (FIN | RST):
                        f.close = ts
                    else:
                        f.client_last = ts
                else:
                    if f is None or ts - f.last > UDP_TIMEOUT:
                        f = open_flows[key] = CapturedFlow(ts, len(flows), src, sport)
                        flows.append(f)
                    if n > 0:
                        f.request += n
                    if ts > f.last:
                        f.last = ts
            elif (src, sport) in servers:
                f = open_flows.get((dst, dport))
                if f is None:
                    continue
                if n > 0:
                    f.response += n
                    f.response_end = ts
                if ts > f.last:
                    f.last = ts
    except CaptureError as e:
        raise SimError("capture %s" % e)
    except OSError as e:
        raise SimError("cannot read capture %s: %s" % (path, e.strerror or e))
    flows.sort(key=lambda f: (f.start, f.order))
    return flows, {"records": records, "first": first, "last": last, "midstream": midstream}


def capture_arrivals(wl, seed):
    """The workload's arrivals from its capture, in the form of sim.generate_arrivals:
    [(time, client index, client port, response size, hold, request size)]. Sets
    wl.clients (the capture's, in the order they first connect), the duration where
    the workload gave none, and wl.capture_info."""
    svc = wl.service
    if not os.path.exists(wl.capture):
        raise SimError("cannot read capture %s: no such file" % wl.capture)
    flows, info = read_flows(wl.capture, wl.protocol, svc.address.packed, svc.port,
                             [(s.addr_bytes, s.port) for s in wl.servers])
    base = info["first"]
    if wl.duration is None:
        span = info["last"] - base if base is not None else 0.0
        wl.set_duration(span if span > 0 else 1.0)
    what = "TCP connection (a client's SYN)" if wl.protocol == "tcp" else "UDP datagram"
    if not flows:
        raise SimError("capture %s: no %s to %s in it (%d records read%s)" % (
            wl.capture, what, svc.endpoint, info["records"],
            ", %d TCP segments of connections whose SYN it lacks" % info["midstream"]
            if info["midstream"] else ""))
    rng = random.Random(seed)
    tcp = wl.protocol == "tcp"
    index, clients, out = {}, [], []
    seen = drawn = 0
    for f in flows:
        t = f.start - base
        if t >= wl.duration:
            break
        c = index.get(f.caddr)
        if c is None:
            c = index[f.caddr] = len(clients)
            clients.append(ipaddress.ip_address(f.caddr))
        if f.response > 0:
            size = f.response
            seen += 1
        else:
            size = max(1, int(wl.size.draw(rng)))
            drawn += 1
        hold = 0.0
        if tcp:
            end = f.response_end if f.response > 0 else f.client_last
            close = f.close if f.close is not None else f.last
            hold = max(0.0, close - (end if end is not None else f.start))
        out.append((t, c, f.cport, size, hold, max(1, min(MAX_REQUEST, f.request))))
    wl.clients = clients
    info.update(connections=len(out), clients=len(clients), responses_seen=seen, responses_drawn=drawn,
                file=os.path.basename(wl.capture))
    wl.capture_info = info
    return out


# ---------------------------------------------------------------- --rules

def _ntop(addr):
    return socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr)


def _service_text(svc):
    proto = "tcp" if svc.protocol == 6 else "udp" if svc.protocol == 17 else str(svc.protocol)
    addr = _ntop(svc.addr)
    return "%s:%s:%d" % (proto, "[%s]" % addr if len(svc.addr) == 16 else addr, svc.port)


def _pick_service(engine, rules_path, wanted):
    from .flags import IPPROTO_TCP, IPPROTO_UDP
    services = [s for s in engine.services.values()
                if not s.fwmark and s.protocol in (IPPROTO_TCP, IPPROTO_UDP)]
    if wanted is not None:
        text = wanted.lower().replace("[", "").replace("]", "")
        for svc in services:
            if _service_text(svc).replace("[", "").replace("]", "") == text:
                return svc
        raise SimError("--service %s: not a TCP or UDP service of %s (it has: %s)" % (
            wanted, rules_path, ", ".join(_service_text(s) for s in services) or "none"))
    if not services:
        raise SimError("%s: no TCP or UDP service (-A -t or -A -u); lvs sim does not simulate "
                       "fwmark services" % rules_path)
    if len(services) > 1:
        raise SimError("%s has %d services (%s); lvs sim runs one: pick it with --service PROTO:VIP:PORT"
                       % (rules_path, len(services), ", ".join(_service_text(s) for s in services)))
    return services[0]


def workload_from_rules(capture_path, rules_path, service=None, size=None):
    """A Workload for `lvs sim CAPTURE --rules RULES`: the rules' service and real
    servers (each with the default capacity model), the capture's connections."""
    import math
    import shlex
    from .engine import Engine
    from .flags import IP_VS_CONN_F_FWD_MASK, IP_VS_CONN_F_MASQ, IP_VS_CONN_F_TUNNEL, \
        IP_VS_SVC_F_PERSISTENT
    from .listing import SCHED_FLAGS, sched_flags_text
    from .replay import ReplayError, load_rules
    if size is not None and not (size >= 0 and math.isfinite(size)):
        raise SimError("--size: must be a number of bytes >= 0 (got %r)" % size)
    try:
        initial, timed = load_rules(rules_path)
    except ReplayError as e:
        raise SimError(str(e))
    engine = Engine()
    for number, cmd in initial:
        try:
            engine.apply(cmd)
        except ConfigError as e:
            raise SimError("%s:%d: %s" % (rules_path, number, e.message))
    svc = _pick_service(engine, rules_path, service)
    table = {"address": _ntop(svc.addr), "port": svc.port, "method": "nat"}
    if svc.flags & SCHED_FLAGS:
        table["flags"] = {svc.sched_name: sched_flags_text(svc)}
    if svc.flags & IP_VS_SVC_F_PERSISTENT:
        table["persistent"] = int(svc.timeout)
        if len(svc.addr) == 16 and svc.netmask != 128:
            table["netmask"] = int(svc.netmask)
        elif len(svc.addr) == 4 and svc.netmask & 0xFFFFFFFF != 0xFFFFFFFF:
            table["netmask"] = socket.inet_ntoa(struct.pack("!I", svc.netmask & 0xFFFFFFFF))
    servers = []
    # The kernel's list puts the newest server first: added back in the rules' order.
    for dest in reversed(svc.destinations):
        fwd = dest.conn_flags & IP_VS_CONN_F_FWD_MASK
        servers.append({"address": _ntop(dest.addr), "port": dest.port, "weight": int(dest.weight),
                        "upper": int(dest.u_threshold), "lower": int(dest.l_threshold),
                        "method": "nat" if fwd == IP_VS_CONN_F_MASQ else
                        "tunnel" if fwd == IP_VS_CONN_F_TUNNEL else "dr"})
    if not servers:
        raise SimError("%s: service %s has no real server" % (rules_path, _service_text(svc)))
    events = []
    for at, number, text in timed:
        if at < 0:
            raise SimError("%s:%d: a timed line's time must be >= 0 (got %g)" % (rules_path, number, at))
        try:
            shlex.split(text)
        except ValueError as e:
            raise SimError("%s:%d: %s" % (rules_path, number, e))
        if text.strip():
            events.append({"at": at, "action": "lvsadm", "args": text})
    raw = {"capture": capture_path, "service": table, "servers": servers, "events": events,
           "connections": {"protocol": "tcp" if svc.protocol == 6 else "udp"}}
    if size is not None:
        raw["connections"]["size"] = size
    wl = Workload(raw, os.path.splitext(os.path.basename(capture_path))[0])
    if svc.sched_name not in wl.schedulers:
        wl.schedulers.append(svc.sched_name)      # the one the rules run, beside the defaults
    return wl
