"""The frame fuzzing campaign (issue 11, part 2): random and mutated frames through
engines with every kind of service, the fast path on and off.

    python -m tools.fuzz.frames [--frames N] [--seed S] [--time-limit SECONDS] [--json]
    python -m tools.fuzz.frames --replay FINDING.json

Each epoch builds one engine pair from a profile (PROFILES: TCP and UDP services,
firewall marks, NAT, direct routing, IPIP, GUE and GRE tunnels with and without
checksums, persistence, one-packet scheduling, every scheduler, IPv4, IPv6 and
tunnels of the other family, sysctls, a bounded table and the defense modes, a sync
master) -- one engine with the fast path (Engine(fastpath=True)), one without -- and
feeds both the same frames on the same clock: one by one through Engine.receive, or
now and then a batch of 2 to 32 frames arriving together, which the fast path engine
takes through receive_batch, or as the live director does (established first:
FastPath.run(defer=...), then receive_batch of what it deferred). The frames:

  valid     packets of flows the generator keeps going, so connections exist and
            the established (fast) path is taken: client SYN, the NAT server's
            SYN-ACK, ACKs, data both ways, FIN and RST closes, reuse of the same
            ports, UDP both ways; IPv6 flows with extension headers; IP options
  mutated   one of those, changed: bit flips, bytes set, truncations, padding,
            header-length and total-length edits, IP option bytes, fragment bits
            and offsets, TTL / hop limit 0 and 1, protocol, addresses, ports, TCP
            flags and data offset, UDP length and zero checksums, IPv6 next-header
            and extension-header chains; then (usually) the checksums made right
            again so that the change reaches past the header checks
  icmp      ICMP and ICMPv6 errors quoting real connections, from the client's side
            and from the real server's (NAT replies, our own tunnel packets, as
            the engine sent them)
  icmp_garbage  errors quoting random or mutated bytes, informational types
  fragment  datagrams cut in fragments (both families, IPv6 behind hop-by-hop and
            routing headers), in order or not, with duplicates, overlaps, gaps,
            bad last fragments, odd sizes, huge offsets, atomic fragments
  random    random bytes, and random bytes behind a plausible IPv4/IPv6 header

The clock moves about 1 ms a frame, with jumps (up to 15 minutes) so that
connections, templates and reassembly queues expire; now and then an lvsadm
command, a sysctl or the MTU changes in both engines.

Every frame is checked: no internal error (the engine's bug counter, with the
traceback through Engine.on_internal_error), no exception out of receive(), the
same frames and drops from both engines (established first: the same frames in
another order, IPv4 IDs aside), every 2000 frames the same state (connections and
templates with their timers, counters, the sync master's entries), and every frame
sent well formed
(Checker): IPv4 header checksum and lengths, TTL / hop limit not 0, no larger than
the MTU, the next hop of the packet's family; TCP, UDP (0 allowed over IPv4, and
for our GUE tunnels over IPv6), ICMP and ICMPv6 checksums, for tunnels the outer
header (GUE/GRE checksums when present) and the inner packet; for fragments the
header only. A transport checksum that is wrong on the way out is a bug unless it
was already wrong on the way in (IPVS, like the kernel, passes or incrementally
updates what it does not check): those are counted as "passed through".
A failure is reduced to a short sequence of events that still shows it, and
printed with the engine's configuration and the traceback.
"""

import argparse
import json
import math
import platform
import random
import socket
import struct
import sys
import time
import traceback
from collections import Counter

from lvs import adm, syncmsg
from lvs.checksum import checksum, l4_checksum
from lvs.engine import Engine


def A(text):
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def ntop(raw):
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, bytes(raw))


# ------------------------------------------------------------------ addresses

VIP_T, VIP_B_T, VIP_C_T = "203.0.113.200", "203.0.113.201", "203.0.113.202"
VIP6_T, VIP6_B_T, VIP6_C_T = "2001:db8::200", "2001:db8::201", "2001:db8::202"
DIR4_T, DIR6_T = "192.0.2.1", "2001:db8:2::1"
VIP, VIP_B, VIP_C, VIP6, VIP6_B, VIP6_C = (A(VIP_T), A(VIP_B_T), A(VIP_C_T), A(VIP6_T), A(VIP6_B_T),
                                           A(VIP6_C_T))
ROUTER_C4, ROUTER_S4 = A("198.51.100.254"), A("192.0.2.254")
ROUTER_C6, ROUTER_S6 = A("2001:db8:100::fe"), A("2001:db8:2::fe")
CLIENTS4 = [A("198.51.100.%d" % i) for i in range(10, 90)]
CLIENTS6 = [A("2001:db8:100::%x" % i) for i in range(1, 0x50)]
GUE_PORTS = (6080, 6081)

# ------------------------------------------------------------------ profiles

COMMANDS = [
    # IPv4
    "-A -t 203.0.113.200:80 -s rr",
    "-a -t 203.0.113.200:80 -r 192.0.2.11:8080 -m",
    "-a -t 203.0.113.200:80 -r 192.0.2.12:80 -m",
    "-A -u 203.0.113.200:53 -s sh -b sh-fallback,sh-port",
    "-a -u 203.0.113.200:53 -r 192.0.2.11:53 -m",
    "-a -u 203.0.113.200:53 -r 192.0.2.13:53 -g -x 5",
    "-A -t 203.0.113.200:443 -s wlc",
    "-a -t 203.0.113.200:443 -r 192.0.2.13:443 -g",
    "-a -t 203.0.113.200:443 -r 192.0.2.14:443 -g -w 2 -x 4 -y 2",
    "-A -t 203.0.113.200:8080 -s lblc -p 30",
    "-a -t 203.0.113.200:8080 -r 192.0.2.15:8080 -i",
    "-a -t 203.0.113.200:8080 -r 192.0.2.16:8080 -i --tun-type gue --tun-port 6080",
    "-A -t 203.0.113.200:8081 -s mh -b mh-fallback,mh-port",
    "-a -t 203.0.113.200:8081 -r 192.0.2.17:8081 -i --tun-type gue --tun-port 6080 --tun-csum",
    "-a -t 203.0.113.200:8081 -r 192.0.2.18:8081 -i --tun-type gre",
    "-A -u 203.0.113.200:8082 -s dh",
    "-a -u 203.0.113.200:8082 -r 192.0.2.19:8082 -i --tun-type gre --tun-csum",
    "-a -u 203.0.113.200:8082 -r 192.0.2.16:8082 -i --tun-type gue --tun-port 6080",
    "-A -t 203.0.113.200:22 -s sh -p 300 -M 255.255.255.0",
    "-a -t 203.0.113.200:22 -r 192.0.2.11:22 -m",
    "-a -t 203.0.113.200:22 -r 192.0.2.12:22 -m",
    "-A -t 203.0.113.200:21 -s sed",
    "-a -t 203.0.113.200:21 -r 192.0.2.12:21 -m",
    "-A -u 203.0.113.200:0 -s nq -p 60",
    "-a -u 203.0.113.200:0 -r 192.0.2.13 -g",
    "-A -u 203.0.113.200:5353 -s wrr -o",
    "-a -u 203.0.113.200:5353 -r 192.0.2.11:5353 -m",
    "-A -t 203.0.113.200:9000 -s wlc",
    "-a -t 203.0.113.200:9000 -r 192.0.2.11:9000 -m -w 0",
    "-A -t 203.0.113.200:8443 -s lblcr",
    "-a -t 203.0.113.200:8443 -r [2001:db8:2::30]:8443 -i",
    "-a -t 203.0.113.200:8443 -r [2001:db8:2::31]:8443 -i --tun-type gue --tun-port 6081",
    "-A -f 1 -s rr -p 120",
    "-a -f 1 -r 192.0.2.20 -m",
    "-a -f 1 -r 192.0.2.21 -g",
    "-A -f 2 -s lc",
    "-a -f 2 -r 192.0.2.22 -i",
    "-A -f 3 -s rr",
    # IPv6
    "-A -t [2001:db8::200]:80 -s fo",
    "-a -t [2001:db8::200]:80 -r [2001:db8:2::11]:8080 -m",
    "-a -t [2001:db8::200]:80 -r [2001:db8:2::12]:80 -m",
    "-A -u [2001:db8::200]:53 -s twos",
    "-a -u [2001:db8::200]:53 -r [2001:db8:2::11]:53 -m",
    "-a -u [2001:db8::200]:53 -r [2001:db8:2::12]:53 -g",
    "-A -t [2001:db8::200]:443 -s ovf",
    "-a -t [2001:db8::200]:443 -r [2001:db8:2::13]:443 -g -x 6",
    "-a -t [2001:db8::200]:443 -r [2001:db8:2::14]:443 -g -w 3",
    "-A -t [2001:db8::200]:8080 -s rr -p 30 -M 64",
    "-a -t [2001:db8::200]:8080 -r [2001:db8:2::15]:8080 -i",
    "-a -t [2001:db8::200]:8080 -r [2001:db8:2::16]:8080 -i --tun-type gue --tun-port 6080 --tun-csum",
    "-A -u [2001:db8::200]:8082 -s mh",
    "-a -u [2001:db8::200]:8082 -r [2001:db8:2::17]:8082 -i --tun-type gre --tun-csum",
    "-a -u [2001:db8::200]:8082 -r [2001:db8:2::18]:8082 -i --tun-type gre",
    "-a -u [2001:db8::200]:8082 -r [2001:db8:2::16]:8082 -i --tun-type gue --tun-port 6080",
    "-A -t [2001:db8::200]:8443 -s rr",
    "-a -t [2001:db8::200]:8443 -r 192.0.2.32:8443 -i",
    "-a -t [2001:db8::200]:8443 -r 192.0.2.33:8443 -i --tun-type gre",
    "-A -u [2001:db8::200]:9000 -s rr",
    "-A -f 4 -6 -s rr -p 60",
    "-a -f 4 -6 -r 2001:db8:2::20 -m",
    "-a -f 4 -6 -r 2001:db8:2::21 -g",
    "-A -f 5 -6 -s rr",
]

# (protocol or 0 for any, destination, port or None for any, mark): an nftables rule each
FWMARKS = [(6, VIP_B_T, None, 1), (17, VIP_B_T, None, 2), (0, VIP_C_T, None, 3), (0, VIP6_B_T, None, 4),
           (0, VIP6_C_T, None, 5)]

# A sync daemon refuses to start beside real servers of the other family (ip_vs_genl_new_daemon).
MIXED = [c for c in COMMANDS if c.startswith("-a -t 203.0.113.200:8443 ") or c.startswith("-a -t [2001:db8::200]:8443 ")]
SYNC_MASTER = "--start-daemon master --mcast-interface eth0 --syncid 7"
SYNC_BACKUP = "--start-daemon backup --mcast-interface eth0 --syncid 7"
PROFILES = [
    {"name": "default",
     "engine": {"director_addr": DIR4_T, "director_addr6": DIR6_T, "mtu": 1500},
     "sysctls": {}},
    {"name": "sync",      # a sync master (version 1), whose datagrams are compared too, and a backup
     "engine": {"director_addr": DIR4_T, "director_addr6": DIR6_T, "mtu": 1500},
     "sysctls": {"sync_threshold": (2, 10)}, "sync": True, "backup": True},
    {"name": "sysctls",   # no director address: tunnels from the VIP, none for the other family
     "engine": {"mtu": 1500},
     "sysctls": {"schedule_icmp": 1, "nat_icmp_send": 1, "sloppy_tcp": 1, "conn_reuse_mode": 0,
                 "expire_nodest_conn": 1, "expire_quiescent_template": 1, "cache_bypass": 1,
                 "pmtu_disc": 0}},
    {"name": "defense",   # a bounded table, the defense modes, a smaller MTU
     "engine": {"director_addr": DIR4_T, "director_addr6": DIR6_T, "mtu": 1300, "max_conns": 250},
     "sysctls": {"secure_tcp": 3, "drop_packet": 3, "am_droprate": 7, "drop_entry": 3,
                 "conn_reuse_mode": 3, "run_estimation": 0, "sync_version": 0}, "sync": True},
]
for _p in PROFILES:
    _p["fwmark"] = FWMARKS
    _p["commands"] = [c for c in COMMANDS if c not in MIXED] + [SYNC_MASTER] if _p.pop("sync", False) else COMMANDS
    if _p.pop("backup", False):
        _p["commands"] = _p["commands"] + [SYNC_BACKUP]

# What may change during an epoch (in both engines, recorded in the trace).
ADM_OPS = [
    "-e -t 203.0.113.200:80 -r 192.0.2.11:8080 -m -w 0",
    "-e -t 203.0.113.200:80 -r 192.0.2.11:8080 -m -w 1",
    "-d -t 203.0.113.200:80 -r 192.0.2.12:80",
    "-a -t 203.0.113.200:80 -r 192.0.2.12:80 -m",
    "-d -t 203.0.113.200:8080 -r 192.0.2.15:8080",
    "-a -t 203.0.113.200:8080 -r 192.0.2.15:8080 -i",
    "-e -t 203.0.113.200:443 -r 192.0.2.13:443 -g -w 0",
    "-e -t 203.0.113.200:443 -r 192.0.2.13:443 -g -w 3",
    "-d -u 203.0.113.200:53 -r 192.0.2.11:53",
    "-a -u 203.0.113.200:53 -r 192.0.2.11:53 -m",
    "-d -f 1 -r 192.0.2.20",
    "-a -f 1 -r 192.0.2.20 -m",
    "-e -t [2001:db8::200]:80 -r [2001:db8:2::11]:8080 -m -w 0",
    "-e -t [2001:db8::200]:80 -r [2001:db8:2::11]:8080 -m -w 1",
    "-d -t [2001:db8::200]:8443 -r 192.0.2.32:8443",
    "-a -t [2001:db8::200]:8443 -r 192.0.2.32:8443 -i",
    "-E -t 203.0.113.200:80 -s wlc",
    "-E -t 203.0.113.200:80 -s rr",
    "-e -t 203.0.113.200:22 -r 192.0.2.11:22 -m -w 0",
    "-e -t 203.0.113.200:22 -r 192.0.2.11:22 -m -w 1",
    "-d -t 203.0.113.200:8080 -r 192.0.2.16:8080",
    "-a -t 203.0.113.200:8080 -r 192.0.2.16:8080 -i --tun-type gue --tun-port 6080",
    "-e -f 1 -r 192.0.2.21 -g -w 0",
    "-e -f 1 -r 192.0.2.21 -g -w 1",
    "-d -u 203.0.113.200:0 -r 192.0.2.13",
    "-a -u 203.0.113.200:0 -r 192.0.2.13 -g",
    "--set 30 20 10",
    "--set 900 120 300",
    "-Z",
]
SYSCTL_OPS = [(name, value) for name in ("expire_nodest_conn", "schedule_icmp", "conn_reuse_mode",
                                         "pmtu_disc", "nat_icmp_send", "sloppy_tcp")
              for value in (0, 1)] + [("secure_tcp", 0), ("secure_tcp", 3), ("backup_only", 1),
                                      ("backup_only", 0), ("backup_only", 0)]
MTU_OPS = (1500, 1400)


def fwmark_function(rules):
    table = [(proto, A(addr), port, mark) for proto, addr, port, mark in rules]

    def mark(protocol, daddr, dport):
        for proto, addr, port, m in table:
            if (not proto or proto == protocol) and addr == daddr and (port is None or port == dport):
                return m
        return 0
    return mark


def build_engine(profile, seed, fastpath):
    kw = profile["engine"]
    eng = Engine(seed=seed, fastpath=fastpath, mtu=kw.get("mtu", 1500), max_conns=kw.get("max_conns"),
                 director_addr=A(kw["director_addr"]) if kw.get("director_addr") else None,
                 director_addr6=A(kw["director_addr6"]) if kw.get("director_addr6") else None,
                 fwmark=fwmark_function(profile["fwmark"]))
    for name, value in profile["sysctls"].items():
        eng.config.set(name, value)
    for line in profile["commands"]:
        _, err, rc = adm.run(eng, line.split())
        if rc:
            raise RuntimeError("profile %s: %r: %s" % (profile["name"], line, err.strip()))
    return eng


def profile_config(profile, seed):
    """The engine's whole configuration, as printed with a repro."""
    return {"profile": profile["name"], "seed": seed, "engine": profile["engine"],
            "sysctls": {k: list(v) if isinstance(v, tuple) else v for k, v in profile["sysctls"].items()},
            "fwmark": [list(r) for r in profile["fwmark"]], "commands": profile["commands"]}


# ------------------------------------------------------------------ packet builders

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_IP4 = struct.Struct("!BBHHHBBH4s4s")


def ip4(src, dst, proto, payload, ttl=64, tos=0, ident=0, df=True, frag=0, options=b""):
    ihl = 5 + len(options) // 4
    hdr = bytearray(_IP4.pack(0x40 | ihl, tos, ihl * 4 + len(payload), ident,
                              (0x4000 if df else 0) | frag, ttl, proto, 0, src, dst)) + options
    struct.pack_into("!H", hdr, 10, checksum(hdr))
    return bytes(hdr) + payload


def ip6(src, dst, nh, payload, hlim=64, tc=0, flow=0):
    return struct.pack("!IHBB16s16s", 0x60000000 | tc << 20 | flow, len(payload), nh, hlim,
                       src, dst) + payload


def tcp(src, dst, sport, dport, seq, ack, flags, payload=b"", window=29200, options=b""):
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(options) // 4) << 4,
                                flags, window, 0, 0)) + options + payload
    struct.pack_into("!H", seg, 16, l4_checksum(src, dst, 6, seg))
    return bytes(seg)


def udp(src, dst, sport, dport, payload=b"", zero=False):
    seg = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)) + payload
    if not zero:
        struct.pack_into("!H", seg, 6, l4_checksum(src, dst, 17, seg) or 0xFFFF)
    return bytes(seg)


def icmp4(icmp_type, code, rest, body):
    msg = bytearray(struct.pack("!BBHI", icmp_type, code, 0, rest)) + body
    struct.pack_into("!H", msg, 2, checksum(msg))
    return bytes(msg)


def icmp6(src, dst, icmp_type, code, rest, body, pseudo=True):
    msg = bytearray(struct.pack("!BBHI", icmp_type, code, 0, rest)) + body
    struct.pack_into("!H", msg, 2, l4_checksum(src, dst, 58, msg) if pseudo else checksum(msg))
    return bytes(msg)


def opt_header(nh, opts):
    """A hop-by-hop or destination options header holding `opts`, padded to 8n."""
    pad = (-(2 + len(opts))) % 8
    if pad == 1:
        opts += b"\x00"
    elif pad:
        opts += bytes((1, pad - 2)) + bytes(pad - 2)
    return bytes((nh, (2 + len(opts)) // 8 - 1)) + opts


def ext_header(kind, nh, rnd):
    """One IPv6 extension header of `kind` (0 hop-by-hop, 60 destination options,
    43 routing with no segment left, 44 an atomic fragment, 51 authentication)."""
    if kind in (0, 60):
        opts = rnd.choice([b"", b"\x01\x02\x00\x00", b"\x05\x02\x00\x00", b"\x00\x00",
                           b"\x1e\x04abcd", b"\x01\x0a" + bytes(10)])
        return opt_header(nh, opts)
    if kind == 43:
        k = rnd.choice((0, 1, 2))
        return bytes((nh, 2 * k, rnd.choice((2, 4, 0, 253)), 0, 0, 0, 0, 0)) + bytes(16 * k)
    if kind == 44:
        return struct.pack("!BBHI", nh, 0, 0, rnd.getrandbits(32))
    icv = bytes(4 * rnd.choice((1, 3)))
    return struct.pack("!BBHII", nh, (12 + len(icv)) // 4 - 2, 0, rnd.getrandbits(32), 1) + icv


def chain6(kinds, final_nh, l4, rnd):
    """(first next header, bytes) of extension headers `kinds` in front of `l4`."""
    nh, out = final_nh, l4
    for kind in reversed(kinds):
        out = ext_header(kind, nh, rnd) + out
        nh = kind
    return nh, out


IP4_OPTIONS = [
    b"\x01\x01\x01\x00",                          # NOPs, EOL
    b"\x94\x04\x00\x00",                          # router alert
    b"\x07\x07\x04" + bytes(4) + b"\x00",         # record route, room for one
    b"\x44\x0c\x05\x00" + bytes(8),               # timestamp
    b"\x83\x07\x04" + A("192.0.2.77") + b"\x00",  # loose source route
    b"\x89\x07\x08" + A("192.0.2.78") + b"\x00",  # strict source route, pointer past it
    b"\x82\x0b" + bytes(9) + b"\x00",             # security
    b"\x00\x00\x00\x00",                          # EOL only
    b"\x07\x00\x00\x00",                          # length 0
    b"\x07\x01\x00\x00",                          # length 1
    b"\x44\x28" + bytes(2),                       # length past the header
    b"\x19\x03\xff\x00",                          # unknown option
]


def ip_options(rnd):
    if rnd.random() < 0.3:
        n = rnd.choice((1, 2, 4, 6, 8, 10)) * 4
        return bytes(rnd.getrandbits(8) for _ in range(n))
    out = b""
    for _ in range(rnd.choice((1, 1, 2, 3))):
        opt = rnd.choice(IP4_OPTIONS)
        if len(out) + len(opt) <= 40:
            out += opt
    return out


# ------------------------------------------------------------------ the checker

EXT6 = frozenset((0, 43, 44, 51, 60))


def walk6(p, start=0):
    """The IPv6 header chain at `start`: (upper protocol, its offset, fragment) where
    fragment is None, "atomic" (offset 0, no more), "first" or "later"; None if cut."""
    n = len(p)
    if n < start + 40:
        return None
    nh = p[start + 6]
    off = start + 40
    frag = None
    while nh in EXT6:
        if off + 2 > n:
            return None
        if nh == 44:
            if off + 8 > n:
                return None
            fo = (p[off + 2] << 8) | p[off + 3]
            if fo & 0xFFF8:
                return p[off], off + 8, "later"
            if fo & 1:
                frag = "first"
            elif frag is None:
                frag = "atomic"
            hl = 8
        elif nh == 51:
            hl = (p[off + 1] + 2) << 2
        else:
            hl = (p[off + 1] + 1) << 3
        nh = p[off]
        off += hl
    if off > n:
        return None
    return nh, off, frag


class Checker:
    """Is a packet well formed? inspect() answers (header problem, transport problem):
    a header problem is always a bug in a packet the engine sends; a transport problem
    is one unless the packet it came from had it already (judge)."""

    def __init__(self, tunnel_sources=(), tunnel_dests=(), gue_ports=GUE_PORTS):
        self.tunnel_sources = frozenset(tunnel_sources)   # the director's and VIP addresses
        self.tunnel_dests = frozenset(tunnel_dests)       # tunnel real servers
        self.gue_ports = frozenset(gue_ports)

    @classmethod
    def for_engine(cls, eng):
        sources = {a for a in (eng.director_addr, eng.director_addr6) if a}
        dests = set()
        for svc in eng.services.values():
            if not svc.fwmark:
                sources.add(svc.addr)
            for d in svc.destinations:
                if d.fwd == 2:
                    dests.add(d.addr)
        for d in eng.trash:
            dests.add(d.addr)
        sources.update((VIP, VIP_B, VIP_C, VIP6, VIP6_B, VIP6_C))
        return cls(sources, dests)

    def inspect(self, p, strict=True, depth=0, tunnels=True):
        if not p:
            return "empty", None
        v = p[0] >> 4
        if v == 4:
            return self._inspect4(p, strict, depth, tunnels)
        if v == 6:
            return self._inspect6(p, strict, depth, tunnels)
        return "ip_version", None

    def _inspect4(self, p, strict, depth, tunnels):
        n = len(p)
        pre = "inner_" if depth else ""
        if n < 20:
            return pre + "ipv4_short", None
        ihl = (p[0] & 0x0F) << 2
        tot = (p[2] << 8) | p[3]
        if ihl < 20 or tot < ihl or tot > n or (strict and tot != n):
            return pre + "ipv4_length", None
        if checksum(p[:ihl]) != 0:
            return pre + "ipv4_checksum", None
        if strict and p[8] == 0:
            return pre + "ttl_zero", None
        if tot != n:
            p = p[:tot]
        frag = ((p[6] << 8) | p[7]) & 0x3FFF
        if frag:
            if ((frag & 0x1FFF) << 3) + tot - ihl > 65535 or (frag & 0x2000 and (tot - ihl) & 7):
                return None, "fragment_geometry"   # an error only if it was not so on the way in
            return None, "fragment"
        return self._l4(p[9], p[12:16], p[16:20], p[ihl:], strict, depth, False, tunnels)

    def _inspect6(self, p, strict, depth, tunnels):
        n = len(p)
        pre = "inner_" if depth else ""
        if n < 40:
            return pre + "ipv6_short", None
        tot = 40 + ((p[4] << 8) | p[5])
        if tot > n or (strict and tot != n):
            return pre + "ipv6_length", None
        if strict and p[7] == 0:
            return pre + "hop_limit_zero", None
        if tot != n:
            p = p[:tot]
        h = walk6(p)
        if h is None:
            return pre + "ipv6_ext_headers", None
        proto, off, frag = h
        if frag in ("first", "later"):
            if frag == "first" and (tot - off) & 7:
                return None, "fragment_geometry"   # the kernel passes such a one on (frag_bad_length)
            return None, "fragment"
        return self._l4(proto, p[8:24], p[24:40], p[off:], strict, depth, True, tunnels)

    def _l4(self, proto, src, dst, seg, strict, depth, v6, tunnels):
        n = len(seg)
        ours = tunnels and depth == 0 and src in self.tunnel_sources and dst in self.tunnel_dests
        if proto == 6:
            if n < 20:
                return None, "tcp_short"
            doff = (seg[12] >> 4) << 2
            if doff < 20 or doff > n:
                return None, "tcp_data_offset"
            if l4_checksum(src, dst, 6, seg) != 0:
                return None, "tcp_checksum"
            return None, None
        if proto == 17:
            if n < 8:
                return None, "udp_short"
            if (seg[4] << 8) | seg[5] != n:
                return None, "udp_length"
            gue = ours and (seg[2] << 8 | seg[3]) in self.gue_ports
            if seg[6] or seg[7]:
                if l4_checksum(src, dst, 17, seg) != 0:
                    return None, "udp_checksum"
            elif v6 and not gue:
                return None, "udp6_zero_checksum"
            if gue:
                if n < 12 or seg[8] >> 6 or seg[9] not in (4, 41):
                    return "gue_header", None
                return self._inner(seg[12 + ((seg[8] & 0x1F) << 2):], seg[9], strict, depth)
            return None, None
        if proto == 1 and not v6:
            if n < 8:
                return None, "icmp_short"
            if checksum(seg) != 0:
                return None, "icmp_checksum"
            return None, None
        if proto == 58 and v6:
            if n < 8:
                return None, "icmp6_short"
            if l4_checksum(src, dst, 58, seg) != 0:
                return None, "icmp6_checksum"
            return None, None
        if ours and proto == 47:
            if n < 4:
                return "gre_header", None
            flags, ptype = struct.unpack_from("!HH", seg)
            if flags & ~0x8000 or ptype not in (0x0800, 0x86DD):
                return "gre_header", None
            if flags & 0x8000:
                if n < 8:
                    return "gre_header", None
                if checksum(seg) != 0:
                    return "gre_checksum", None
            return self._inner(seg[8 if flags & 0x8000 else 4:], 4 if ptype == 0x0800 else 41, strict, depth)
        if ours and proto in (4, 41):
            return self._inner(seg, proto, strict, depth)
        return None, None

    def _inner(self, inner, proto, strict, depth):
        if not inner or inner[0] >> 4 != (4 if proto == 4 else 6):
            return "inner_ip_version", None
        return self.inspect(inner, strict, depth + 1)

    def judge(self, tx, frame, datagram, mtu):
        """None if `tx` is well formed; else ("malformed", problem), or ("passthrough",
        problem) for a transport checksum that the frame it came from (`datagram`, the
        reassembled one, if any) had wrong already."""
        p = tx.packet
        hdr, l4 = self.inspect(p)
        if hdr is None and p and len(tx.nexthop) != (4 if p[0] >> 4 == 4 else 16):
            hdr = "nexthop_family"
        if hdr is None and len(p) > mtu:
            hdr = "larger_than_mtu"
        if hdr is not None:
            return "malformed", hdr
        if l4 is None or l4 == "fragment":
            return None
        ih, il = self.inspect(datagram if datagram is not None else frame, strict=False, tunnels=False)
        if ih is None and il is None:
            return "malformed", l4
        return "passthrough", l4


# ------------------------------------------------------------------ frame sources

def _size(rnd):
    r = rnd.random()
    if r < 0.40:
        return 0
    if r < 0.75:
        return rnd.randint(1, 100)
    if r < 0.90:
        return rnd.randint(100, 1000)
    if r < 0.98:
        return rnd.randint(1000, 1480)
    return rnd.randint(1480, 3000)


class Flow:
    """One client's conversation with one service: a script of (who, TCP flags, size),
    played in order; the server's side is sent only where it passes the director."""

    __slots__ = ("fam", "proto", "caddr", "cport", "vaddr", "vport", "script", "pos", "cseq", "sseq",
                 "tos", "ttl", "df", "options", "ext", "zero", "last", "to_rs", "to_client")

    def __init__(self, rnd, fam, proto, caddr, cport, vaddr, vport):
        self.fam, self.proto, self.caddr, self.cport, self.vaddr, self.vport = (
            fam, proto, caddr, cport, vaddr, vport)
        self.pos = 0
        self.cseq, self.sseq = rnd.getrandbits(32), rnd.getrandbits(32)
        self.tos = rnd.choice((0, 0, 0, 0, 1, 2, 3, 0xB8))
        self.ttl = rnd.choice((64, 64, 64, 128, 255, 2))
        self.df = rnd.random() < 0.85
        self.options = ip_options(rnd) if fam == 4 and rnd.random() < 0.05 else b""
        self.ext = []
        if fam == 6 and rnd.random() < 0.25:
            self.ext = rnd.choice([[0], [60], [43], [0, 60], [0, 43, 60], [44], [51], [0, 44]])
        self.zero = proto == 17 and fam == 4 and rnd.random() < 0.1
        self.last = None          # the last valid frame sent
        self.to_rs = None         # the last frame the engine sent on (not to the client)
        self.to_client = None
        self.script = self._script(rnd)

    def _script(self, rnd):
        s = []
        if self.proto == 17:
            for _ in range(rnd.randint(1, 12)):
                s.append(("c", 0, _size(rnd)))
                if rnd.random() < 0.8:
                    s.append(("s", 0, _size(rnd)))
            return s
        s.append(("c", TCP_SYN, 0))
        if rnd.random() < 0.08:
            s.append(("c", TCP_SYN, 0))                    # a retransmission
        s += [("s", TCP_SYN | TCP_ACK, 0), ("c", TCP_ACK, 0)]
        for _ in range(rnd.randint(0, 14)):
            who = rnd.choice("ccs")
            s.append((who, TCP_PSH | TCP_ACK, _size(rnd)))
            s.append(("s" if who == "c" else "c", TCP_ACK, 0))
        end = rnd.random()
        if end < 0.5:
            s += [("c", TCP_FIN | TCP_ACK, 0), ("s", TCP_ACK, 0), ("s", TCP_FIN | TCP_ACK, 0),
                  ("c", TCP_ACK, 0)]
        elif end < 0.65:
            s += [("s", TCP_FIN | TCP_ACK, 0), ("c", TCP_FIN | TCP_ACK, 0), ("s", TCP_ACK, 0)]
        elif end < 0.75:
            s.append(("c", TCP_RST, 0))
        elif end < 0.85:
            s.append(("s", TCP_RST | TCP_ACK, 0))
        # else: left idle, to time out
        if rnd.random() < 0.1:
            s += [("c", TCP_SYN, 0), ("s", TCP_SYN | TCP_ACK, 0), ("c", TCP_ACK, 0)]   # the ports again
        return s

    def done(self):
        return self.pos >= len(self.script)

    def endpoints(self, who, ref, rnd):
        """(src, dst, sport, dport) of a packet by `who`, or None: a server's packet is
        sent by the real server the reference engine chose (NAT), or by a DR/tunnel
        server through the director from the VIP, or passes the director by."""
        if who == "c":
            return self.caddr, self.vaddr, self.cport, self.vport
        cp = ref.conntab.by_in.get((self.proto, self.caddr, self.cport, self.vaddr, self.vport))
        if cp is not None and cp.flags & 7 == 0 and len(cp.daddr) == len(self.caddr):
            return cp.daddr, self.caddr, cp.dport, self.cport
        if rnd.random() < 0.4:
            return self.vaddr, self.caddr, self.vport, self.cport
        return None

    def build(self, gen, who, flags, size, src, dst, sport, dport, df=None):
        rnd = gen.rnd
        payload = gen.payload(size)
        if self.proto == 6:
            if who == "c":
                seq, ack = self.cseq, self.sseq
            else:
                seq, ack = self.sseq, self.cseq
            l4 = tcp(src, dst, sport, dport, seq, ack if flags & TCP_ACK else 0, flags, payload)
        else:
            l4 = udp(src, dst, sport, dport, payload, zero=self.zero)
        ttl = self.ttl if who == "c" else 64
        if self.fam == 4:
            return ip4(src, dst, self.proto, l4, ttl=ttl, tos=self.tos, ident=rnd.getrandbits(16),
                       df=self.df if df is None else df, options=self.options)
        nh, body = chain6(self.ext, self.proto, l4, rnd)
        return ip6(src, dst, nh, body, hlim=ttl, tc=self.tos)

    def next_frame(self, gen, ref, advance=True):
        """The next packet of the script (None when the script is over or its packets
        pass the director by)."""
        while self.pos < len(self.script):
            who, flags, size = self.script[self.pos]
            ends = self.endpoints(who, ref, gen.rnd)
            if advance or ends is None:
                self.pos += 1
            if ends is None:
                continue
            frame = self.build(gen, who, flags, size, *ends)
            if advance:
                if self.proto == 6:
                    grow = size + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
                    if who == "c":
                        self.cseq = (self.cseq + grow) & 0xFFFFFFFF
                    else:
                        self.sseq = (self.sseq + grow) & 0xFFFFFFFF
                self.last = frame
            return frame
        return None

    def observe(self, out):
        for tx in out:
            if tx.nexthop == self.caddr:
                self.to_client = tx.packet
            else:
                self.to_rs = tx.packet


# (protocol, destination, port or None for a random one, weight)
TARGETS4 = [(6, VIP, 80, 10), (17, VIP, 53, 6), (6, VIP, 443, 6), (6, VIP, 8080, 5), (6, VIP, 8081, 5),
            (17, VIP, 8082, 5), (6, VIP, 22, 3), (6, VIP, 21, 2), (6, VIP, 2121, 1), (17, VIP, None, 2),
            (17, VIP, 5353, 2), (6, VIP, 9000, 1), (6, VIP, 8443, 4), (6, VIP_B, None, 3),
            (17, VIP_B, None, 2), (6, VIP_C, None, 1), (17, VIP_C, None, 1), (6, VIP, 7777, 1)]
TARGETS6 = [(6, VIP6, 80, 8), (17, VIP6, 53, 5), (6, VIP6, 443, 5), (6, VIP6, 8080, 5), (17, VIP6, 8082, 5),
            (6, VIP6, 8443, 4), (17, VIP6, 9000, 1), (6, VIP6_B, None, 2), (17, VIP6_B, None, 2),
            (6, VIP6, 7777, 1), (6, VIP6_C, None, 1), (17, VIP6_C, None, 1)]
RELATED4 = [(3, 3), (3, 1), (3, 0), (3, 4), (3, 13), (11, 0), (11, 1), (4, 0), (12, 0)]
RELATED6 = [(1, 4), (1, 3), (1, 0), (2, 0), (3, 0), (3, 1), (4, 0), (4, 1)]
MTUS = (0, 68, 296, 500, 552, 576, 1000, 1200, 1280, 1400, 1480, 1500, 9000)


def _cum(targets):
    total, out = 0, []
    for t in targets:
        total += t[3]
        out.append(total)
    return out


CUM4, CUM6 = _cum(TARGETS4), _cum(TARGETS6)


class Generator:
    """Where the frames come from: a pool of flows and the sources above."""

    NFLOWS = 48

    def __init__(self, rnd):
        self.rnd = rnd
        self.flows = []
        self.pending = []         # fragments waiting their turn, interleaved
        self.ops = Counter()      # mutations applied, by name
        self._pay = bytes(rnd.getrandbits(8) for _ in range(4096))

    def payload(self, size):
        if not size:
            return b""
        i = self.rnd.randrange(0, 4096 - min(size, 4096) + 1)
        data = self._pay[i:i + size]
        return data if len(data) == size else (data * (size // max(len(data), 1) + 1))[:size]

    def new_flow(self):
        rnd = self.rnd
        fam = 4 if rnd.random() < 0.65 else 6
        targets, cum = (TARGETS4, CUM4) if fam == 4 else (TARGETS6, CUM6)
        proto, vaddr, vport, _ = targets[_pick(rnd, cum)]
        if vport is None:
            vport = rnd.choice((80, 443, 1234, 5000, 40000, rnd.randint(1, 65535)))
        caddr = rnd.choice(CLIENTS4 if fam == 4 else CLIENTS6)
        cport = 20 if rnd.random() < 0.01 else rnd.randint(1024, 65535)
        return Flow(rnd, fam, proto, caddr, cport, vaddr, vport)

    def flow(self):
        rnd = self.rnd
        if len(self.flows) < self.NFLOWS:
            f = self.new_flow()
            self.flows.append(f)
            return f
        i = rnd.randrange(len(self.flows))
        f = self.flows[i]
        if f.done():
            f = self.flows[i] = self.new_flow()
        return f

    def next(self, ref):
        """(source, frame, flow or None)."""
        rnd = self.rnd
        if self.pending and rnd.random() < 0.5:
            return self.pending.pop(0)
        r = rnd.random()
        if r < 0.42:
            for _ in range(4):
                f = self.flow()
                frame = f.next_frame(self, ref)
                if frame is not None:
                    return "valid", frame, f
        elif r < 0.74:
            f = self.flow()
            frame = f.last if f.last is not None and rnd.random() < 0.5 else f.next_frame(
                self, ref, advance=rnd.random() < 0.3)
            if frame is not None:
                return "mutated", self.mutate(frame), f
        elif r < 0.80:
            frame, f = self.icmp_error(ref)
            if frame is not None:
                return "icmp", frame, f
        elif r < 0.83:
            return "icmp_garbage", self.icmp_garbage(), None
        elif r < 0.855:
            got = self.fragments(ref)
            if got:
                self.pending.extend(got[1:])
                return got[0]
        return "random", self.random_frame(), None

    # ---------------------------------------------------------- random

    def random_frame(self):
        rnd = self.rnd
        r = rnd.random()
        n = rnd.choice((0, 1, 8, 19, 20, 21, 28, 39, 40, 41, 48, 60, 64, 100, rnd.randint(0, 200),
                        rnd.randint(0, 1600)))
        b = bytearray(rnd.getrandbits(8) for _ in range(n))
        if r < 0.3 or n < 20:
            return bytes(b)
        if r < 0.65 or n < 40:
            b[0] = 0x45 if rnd.random() < 0.7 else 0x40 | rnd.randint(0, 15)
            struct.pack_into("!H", b, 2, n)
            if rnd.random() < 0.7:
                b[12:16] = rnd.choice(CLIENTS4 + [ROUTER_S4, A("192.0.2.11")])
                b[16:20] = rnd.choice((VIP, VIP_B, VIP_C, A(DIR4_T), VIP))
            if rnd.random() < 0.6:
                b[6] &= 0x40
                b[7] = 0
            b[9] = rnd.choice((1, 6, 17, 6, 17, 4, 47, rnd.getrandbits(8)))
            fix_checksums(b, l4=rnd.random() < 0.5)
            return bytes(b)
        b[0] = 0x60 | (b[0] & 0x0F)
        struct.pack_into("!H", b, 4, n - 40)
        b[6] = rnd.choice((6, 17, 58, 0, 43, 44, 60, 59, 51, rnd.getrandbits(8)))
        if rnd.random() < 0.7:
            b[8:24] = rnd.choice(CLIENTS6)
            b[24:40] = rnd.choice((VIP6, VIP6_B, A(DIR6_T)))
        fix_checksums(b, l4=rnd.random() < 0.5)
        return bytes(b)

    # ---------------------------------------------------------- ICMP errors, fragments

    def icmp_error(self, ref):
        rnd = self.rnd
        f = self.flow()
        if f.to_rs is not None and rnd.random() < 0.5:
            return self._icmp_from_rs(f), f
        # From the client's side (the client itself or a router on its way), about
        # a packet VIP -> client.
        if f.proto == 6:
            l4 = tcp(f.vaddr, f.caddr, f.vport, f.cport, f.sseq, f.cseq, TCP_SYN | TCP_ACK, self.payload(_size(rnd)))
        else:
            l4 = udp(f.vaddr, f.caddr, f.vport, f.cport, self.payload(_size(rnd)))
        src = f.caddr if rnd.random() < 0.6 else (ROUTER_C4 if f.fam == 4 else ROUTER_C6)
        if f.fam == 4:
            quoted = ip4(f.vaddr, f.caddr, f.proto, l4, ttl=rnd.randint(1, 64), ident=rnd.getrandbits(16))
            quoted = quoted[:rnd.choice((28, 48, 68, 576, len(quoted)))]
            t, c = rnd.choice(RELATED4)
            rest = rnd.choice(MTUS) if (t, c) == (3, 4) else 0
            return ip4(src, f.vaddr, 1, icmp4(t, c, rest, quoted), ident=rnd.getrandbits(16),
                       ttl=rnd.choice((64, 1, 2))), f
        quoted = ip6(f.vaddr, f.caddr, f.proto, l4, hlim=rnd.randint(1, 64))
        quoted = quoted[:rnd.choice((48, 64, 1232, len(quoted)))]
        t, c = rnd.choice(RELATED6)
        rest = rnd.choice(MTUS) if t == 2 else 0
        return ip6(src, f.vaddr, 58, icmp6(src, f.vaddr, t, c, rest, quoted),
                   hlim=rnd.choice((64, 1, 2))), f

    def _icmp_from_rs(self, f):
        """An error about a packet the engine sent on: a NAT'd packet to the real server,
        one of our tunnel packets, a DR frame; from that server or a router near it, to
        the packet's source."""
        rnd = self.rnd
        q = f.to_rs
        if q[0] >> 4 == 4:
            src = q[16:20] if rnd.random() < 0.6 else ROUTER_S4
            t, c = rnd.choice(RELATED4 + [(3, 4)] * 4)
            rest = rnd.choice(MTUS) if (t, c) == (3, 4) else 0
            quoted = q[:rnd.choice((28, 48, 68, 88, 548, len(q)))]
            return ip4(src, q[12:16], 1, icmp4(t, c, rest, quoted), ident=rnd.getrandbits(16))
        src = q[24:40] if rnd.random() < 0.6 else ROUTER_S6
        t, c = rnd.choice(RELATED6 + [(2, 0)] * 3)
        rest = rnd.choice(MTUS) if t == 2 else 0
        quoted = q[:rnd.choice((48, 68, 88, 1232, len(q)))]
        # ip_vs_checksum_complete sums without the pseudo-header: send both kinds.
        return ip6(src, q[8:24], 58, icmp6(src, q[8:24], t, c, rest, quoted, pseudo=rnd.random() < 0.5))

    def icmp_garbage(self):
        rnd = self.rnd
        fam = 4 if rnd.random() < 0.6 else 6
        r = rnd.random()
        if r < 0.4:
            quoted = bytes(rnd.getrandbits(8) for _ in range(rnd.choice((0, 4, 8, 20, 28, 40, 48, 80))))
        else:
            f = self.flow()
            quoted = f.last or f.to_rs or b""
            if quoted:
                quoted = self.mutate(quoted)[:rnd.choice((8, 20, 28, 40, 48, 64, 200))]
        if fam == 4:
            t, c = rnd.choice(RELATED4 + [(8, 0), (0, 0), (5, 1), (rnd.getrandbits(8), 0)])
            msg = bytearray(icmp4(t, c, rnd.choice((0, 576, rnd.getrandbits(32))), quoted))
            if rnd.random() < 0.15:
                msg[2] ^= 0x10
            src = rnd.choice(CLIENTS4 + [ROUTER_S4, A("192.0.2.11"), A("192.0.2.16")])
            dst = rnd.choice((VIP, A(DIR4_T), VIP_B, rnd.choice(CLIENTS4)))
            return ip4(src, dst, 1, bytes(msg), ident=rnd.getrandbits(16))
        t, c = rnd.choice(RELATED6 + [(128, 0), (129, 0), (135, 0), (136, 0), (rnd.getrandbits(8), 0)])
        src = rnd.choice(CLIENTS6 + [ROUTER_S6, A("2001:db8:2::11")])
        dst = rnd.choice((VIP6, A(DIR6_T), VIP6_B, rnd.choice(CLIENTS6)))
        msg = bytearray(icmp6(src, dst, t, c, rnd.choice((0, 1280, rnd.getrandbits(32))), quoted,
                              pseudo=rnd.random() < 0.8))
        if rnd.random() < 0.15:
            msg[2] ^= 0x10
        return ip6(src, dst, 58, bytes(msg), hlim=rnd.choice((255, 64, 1)))

    def fragments(self, ref):
        """A datagram of a flow cut in fragments, the pieces in some order or not all
        of them: [(source, frame, flow)]."""
        rnd = self.rnd
        r = rnd.random()
        if r < 0.12:
            packet, f = self.icmp_error(ref)      # an error about a connection, in pieces
        else:
            f = self.flow()
            if r < 0.15:
                size = (65535 - 20 - len(f.options) - (20 if f.proto == 6 else 8) if f.fam == 4 else 65400
                        ) - rnd.choice((0, 0, 20, 100, 3000))
            else:
                size = rnd.choice((40, 100, 200, 600, 1400, 1400, 1600, 2400, 4000, 9000))
            if f.proto == 6:
                flags = TCP_PSH | TCP_ACK if f.pos > 2 else TCP_SYN
            else:
                flags = 0
            who = "c" if rnd.random() < 0.75 else "s"
            ends = f.endpoints(who, ref, rnd) or f.endpoints("c", ref, rnd)
            packet = f.build(self, who, flags, size, *ends, df=rnd.random() < 0.1)
        variant = rnd.choice(("inorder", "inorder", "inorder", "reverse", "shuffle", "dup", "overlap",
                              "missing", "badlast", "oddmf", "huge", "tiny", "mutate", "atomic"))
        pieces = _cut(rnd, packet, variant)
        frames = frag4(packet, pieces) if packet[0] >> 4 == 4 else frag6(packet, pieces, rnd.getrandbits(32))
        if variant == "reverse":
            frames.reverse()
        elif variant == "shuffle":
            rnd.shuffle(frames)
        elif variant == "dup" and frames:
            frames.insert(rnd.randrange(len(frames) + 1), rnd.choice(frames))
        elif variant == "missing" and len(frames) > 1:
            del frames[rnd.randrange(len(frames))]
        elif variant == "mutate" and frames:
            i = rnd.randrange(len(frames))
            frames[i] = self.mutate(frames[i])
        source = "fragment" if variant in ("inorder", "reverse", "shuffle", "atomic") else "fragment_odd"
        return [(source, fr, f) for fr in frames]

    # ---------------------------------------------------------- mutations

    def mutate(self, frame):
        rnd = self.rnd
        b = bytearray(frame)
        for _ in range(1 if rnd.random() < 0.7 else rnd.randint(2, 4)):
            if len(b) >= 40 and b[0] >> 4 == 6:
                name, op = rnd.choice(OPS6)
            else:
                name, op = rnd.choice(OPS4)
            self.ops[name] += 1
            op(self, b)
        r = rnd.random()
        if r < 0.55:
            fix_checksums(b)
        elif r < 0.8:
            fix_checksums(b, l4=False)
        return bytes(b)

    def m_flip(self, b):
        if b:
            rnd = self.rnd
            i = rnd.randrange(min(len(b), 64)) if rnd.random() < 0.7 else rnd.randrange(len(b))
            b[i] ^= 1 << rnd.randrange(8)

    def m_set(self, b):
        if b:
            rnd = self.rnd
            i = rnd.randrange(min(len(b), 64)) if rnd.random() < 0.8 else rnd.randrange(len(b))
            b[i] = rnd.choice((0, 1, 0x7F, 0x80, 0xFF, rnd.getrandbits(8)))

    def m_truncate(self, b):
        rnd = self.rnd
        del b[rnd.randint(0, len(b)):]
        if rnd.random() < 0.6:
            _fix_length(b)

    def m_extend(self, b):
        rnd = self.rnd
        b += bytes(rnd.getrandbits(8) for _ in range(rnd.choice((1, 2, 6, 8, 20, 64))))
        if rnd.random() < 0.3:
            _fix_length(b)

    def m_ihl(self, b):
        if b:
            b[0] = (b[0] & 0xF0) | self.rnd.randint(0, 15)

    def m_totlen(self, b):
        if len(b) >= 4:
            rnd = self.rnd
            n = len(b)
            v = rnd.choice((0, 1, 19, 20, 21, (b[0] & 15) * 4, n - 1, n + 1, n + 8, n - 8, 65535,
                            rnd.getrandbits(16)))
            struct.pack_into("!H", b, 2, max(0, min(v, 65535)))

    def m_options(self, b):
        if len(b) >= 20:
            ihl = (b[0] & 15) * 4
            if not 20 <= ihl <= len(b):
                ihl = 20
            opts = ip_options(self.rnd)
            b[20:ihl] = opts
            b[0] = 0x40 | (5 + len(opts) // 4)
            tot = (b[2] << 8) | b[3]
            struct.pack_into("!H", b, 2, max(0, min(65535, tot + 20 + len(opts) - ihl)))

    def m_frag(self, b):
        if len(b) >= 8:
            rnd = self.rnd
            v = rnd.choice((0x2000, 0x2001, 0x0001, 0x0003, 0x1FFF, 0x3FFF, 0x4001, 0x6000,
                            0x2000 | rnd.randint(1, 0x1FFF), rnd.randint(1, 0x1FFF), 0x8000))
            struct.pack_into("!H", b, 6, v)

    def m_ttl(self, b):
        if len(b) >= 9:
            b[8] = self.rnd.choice((0, 1, 1, 2, 255))

    def m_tos(self, b):
        if len(b) >= 2:
            b[1] = self.rnd.getrandbits(8)

    def m_proto(self, b):
        if len(b) >= 10:
            b[9] = self.rnd.choice((0, 1, 2, 4, 6, 17, 41, 47, 50, 58, 132, self.rnd.getrandbits(8)))

    def m_ident(self, b):
        if len(b) >= 6:
            struct.pack_into("!H", b, 4, self.rnd.getrandbits(16))

    def m_addr4(self, b):
        if len(b) >= 20:
            rnd = self.rnd
            r = rnd.random()
            if r < 0.3:
                b[12:16], b[16:20] = bytes(b[16:20]), bytes(b[12:16])
            elif r < 0.6:
                b[12:16] = rnd.choice((A("192.0.2.11"), A("192.0.2.12"), A("192.0.2.16"), VIP,
                                       ROUTER_S4, A("0.0.0.0"), A("255.255.255.255")))
            else:
                b[16:20] = rnd.choice((VIP, VIP_B, VIP_C, A(DIR4_T), A("224.0.0.5"),
                                       A("255.255.255.255"), rnd.choice(CLIENTS4)))

    def m_ports(self, b):
        t = _transport(b)
        if t is not None and t[1] + 4 <= len(b):
            rnd = self.rnd
            off = t[1] + rnd.choice((0, 2))
            struct.pack_into("!H", b, off, rnd.choice((0, 20, 21, 22, 53, 80, 443, 2121, 5353, 6080,
                                                       8080, 8081, 8082, 8443, 9000,
                                                       rnd.getrandbits(16))))

    def m_tcp(self, b):
        t = _transport(b)
        if t is not None and t[0] == 6 and t[1] + 14 <= len(b):
            rnd = self.rnd
            if rnd.random() < 0.7:
                b[t[1] + 13] = rnd.choice((0, TCP_SYN | TCP_FIN, TCP_SYN | TCP_RST, TCP_FIN, TCP_RST,
                                           TCP_SYN | TCP_ACK, TCP_FIN | TCP_ACK, 0xFF, 0x40, 0x80,
                                           rnd.getrandbits(8)))
            else:
                b[t[1] + 12] = rnd.randint(0, 15) << 4

    def m_udp(self, b):
        t = _transport(b)
        if t is not None and t[0] == 17 and t[1] + 8 <= len(b):
            rnd = self.rnd
            if rnd.random() < 0.5:
                b[t[1] + 6:t[1] + 8] = b"\0\0"
            else:
                struct.pack_into("!H", b, t[1] + 4, rnd.choice((0, 1, 7, 8, 9, len(b) - t[1] + 1,
                                                                rnd.getrandbits(16))))

    def m_payload(self, b):
        t = _transport(b)
        if t is not None:
            start = t[1] + (20 if t[0] == 6 else 8)
            for i in range(start, len(b)):
                b[i] = self.rnd.getrandbits(8)

    # IPv6

    def m_plen(self, b):
        rnd = self.rnd
        n = len(b) - 40
        struct.pack_into("!H", b, 4, max(0, min(65535, rnd.choice((0, n - 1, n + 1, n - 8, n + 8, 8,
                                                                    rnd.getrandbits(16))))))

    def m_hlim(self, b):
        b[7] = self.rnd.choice((0, 1, 1, 2, 255))

    def m_tc(self, b):
        v = self.rnd.getrandbits(28)
        b[0] = 0x60 | (v >> 24)
        b[1:4] = (v & 0xFFFFFF).to_bytes(3, "big")

    def m_nexthdr(self, b):
        h = _chain_positions(b)
        pos = self.rnd.choice(h) if h else 6
        b[pos] = self.rnd.choice((0, 43, 44, 60, 59, 51, 50, 58, 6, 17, 41, 4, 135,
                                  self.rnd.getrandbits(8)))

    def m_ext_insert(self, b):
        """A chain of extension headers, well formed or not, after the fixed header."""
        rnd = self.rnd
        nh = b[6]
        chain = b""
        kinds = [rnd.choice((0, 60, 43, 44, 51, 0, 60)) for _ in range(rnd.randint(1, 4))]
        for kind in reversed(kinds):
            if kind == 44 and rnd.random() < 0.5:
                h = struct.pack("!BBHI", nh, 0, rnd.choice((1, 8, 9, 0x10, 0xFFF8, rnd.getrandbits(16))),
                                rnd.getrandbits(32))
            elif kind == 0 and rnd.random() < 0.4:
                opt = bytes((rnd.choice((0xC2, 0x80, 0x40, 0xC0, 0x05, 0x3E, 0x31)), rnd.choice((0, 2, 4, 6))))
                h = opt_header(nh, opt + bytes(opt[1]))
            else:
                h = ext_header(kind, nh, rnd)
            if rnd.random() < 0.15:
                h = bytes((h[0], rnd.getrandbits(8))) + h[2:]      # a length that lies
            chain = h + chain
            nh = kind
        b[6] = nh
        b[40:40] = chain
        if rnd.random() < 0.9:
            struct.pack_into("!H", b, 4, min(65535, len(b) - 40))

    def m_ext_len(self, b):
        h = _chain_positions(b)
        if len(h) > 1:
            pos = self.rnd.choice(h[1:])
            if pos + 1 < len(b):
                b[pos + 1] = self.rnd.choice((0, 1, 2, 0xFF, self.rnd.getrandbits(8)))

    def m_version(self, b):
        b[0] = (b[0] & 0x0F) | (self.rnd.choice((4, 5, 7, 0, 15)) << 4)

    def m_addr6(self, b):
        rnd = self.rnd
        r = rnd.random()
        if r < 0.3:
            b[8:24], b[24:40] = bytes(b[24:40]), bytes(b[8:24])
        elif r < 0.6:
            b[8:24] = rnd.choice((A("2001:db8:2::11"), A("2001:db8:2::16"), VIP6, A("::"), A("ff02::1"),
                                  A("::ffff:198.51.100.20")))
        else:
            b[24:40] = rnd.choice((VIP6, VIP6_B, A(DIR6_T), A("ff02::1:ff00:200"), A("::1"),
                                   rnd.choice(CLIENTS6)))


OPS4 = [(name, getattr(Generator, "m_" + name)) for name in (
    "flip", "flip", "set", "set", "truncate", "extend", "ihl", "totlen", "options", "options", "frag",
    "frag", "ttl", "ttl", "tos", "proto", "ident", "addr4", "ports", "tcp", "tcp", "udp", "payload")]
OPS6 = [(name, getattr(Generator, "m_" + name)) for name in (
    "flip", "flip", "set", "set", "truncate", "extend", "plen", "hlim", "hlim", "tc", "nexthdr",
    "ext_insert", "ext_insert", "ext_len", "version", "addr6", "ports", "tcp", "tcp", "udp", "payload")]


def _pick(rnd, cum):
    x = rnd.random() * cum[-1]
    for i, c in enumerate(cum):
        if x < c:
            return i
    return len(cum) - 1


def _fix_length(b):
    if len(b) >= 4 and b[0] >> 4 == 4:
        struct.pack_into("!H", b, 2, min(len(b), 65535))
    elif len(b) >= 6 and b[0] >> 4 == 6:
        struct.pack_into("!H", b, 4, max(0, min(len(b) - 40, 65535)))


def _chain_positions(b):
    """Offsets of the next-header bytes along an IPv6 chain (6 first)."""
    out = [6]
    nh, off = b[6], 40
    while nh in EXT6 and off + 2 <= len(b) and len(out) < 8:
        out.append(off)
        nh = b[off]
        if nh == 44:
            off += 8
        elif nh == 51:
            off += (b[off + 1] + 2) << 2
        else:
            off += (b[off + 1] + 1) << 3
    return out


def _transport(b):
    """(protocol, offset) of the transport header of a packet, or None."""
    n = len(b)
    if n >= 20 and b[0] >> 4 == 4:
        ihl = (b[0] & 15) * 4
        if 20 <= ihl <= n:
            return b[9], ihl
        return None
    if n >= 40 and b[0] >> 4 == 6:
        h = walk6(b)
        if h is not None and h[2] != "later":
            return h[0], h[1]
    return None


def fix_checksums(b, l4=True):
    """Make the checksums right again after a mutation (as far as the lengths allow)."""
    n = len(b)
    if n >= 20 and b[0] >> 4 == 4:
        ihl = (b[0] & 15) * 4
        if not 20 <= ihl <= n:
            return
        tot = (b[2] << 8) | b[3]
        if l4 and not ((b[6] << 8) | b[7]) & 0x3FFF:
            _fix_l4(b, b[9], ihl, min(max(tot, ihl), n), bytes(b[12:16]), bytes(b[16:20]))
        b[10:12] = b"\0\0"
        struct.pack_into("!H", b, 10, checksum(b[:ihl]))
    elif n >= 40 and b[0] >> 4 == 6 and l4:
        h = walk6(b)
        if h is not None and h[2] not in ("first", "later"):
            end = min(40 + ((b[4] << 8) | b[5]), n)
            _fix_l4(b, h[0], h[1], end, bytes(b[8:24]), bytes(b[24:40]))


def _fix_l4(b, proto, off, end, src, dst):
    if end <= off:
        return
    if proto == 6 and end - off >= 18:
        b[off + 16:off + 18] = b"\0\0"
        struct.pack_into("!H", b, off + 16, l4_checksum(src, dst, 6, b[off:end]))
    elif proto == 17 and end - off >= 8 and (b[off + 6] or b[off + 7] or len(src) == 16):
        b[off + 6:off + 8] = b"\0\0"
        struct.pack_into("!H", b, off + 6, l4_checksum(src, dst, 17, b[off:end]) or 0xFFFF)
    elif proto == 1 and len(src) == 4 and end - off >= 4:
        b[off + 2:off + 4] = b"\0\0"
        struct.pack_into("!H", b, off + 2, checksum(b[off:end]))
    elif proto == 58 and len(src) == 16 and end - off >= 4:
        b[off + 2:off + 4] = b"\0\0"
        struct.pack_into("!H", b, off + 2, l4_checksum(src, dst, 58, b[off:end]))




def _fragmentable(packet):
    """(unfragmentable length, where the next header naming the rest is, its value)."""
    if packet[0] >> 4 == 4:
        return (packet[0] & 15) * 4, None, None
    pos, off, nh = 6, 40, packet[6]
    while nh in (0, 43) and off + 2 <= len(packet):
        pos = off
        nh = packet[off]
        off += (packet[off + 1] + 1) << 3
    return off, pos, nh


def _cut(rnd, packet, variant):
    """[(offset it says, length, more, offset of its data)] over the fragmentable part
    of `packet`."""
    start = _fragmentable(packet)[0]
    total = len(packet) - start
    if variant == "atomic" or total <= 8:
        return [(0, total, False, 0)]
    out, off = [], 0
    step = rnd.choice((8, 16, 64, 256, 512, 1024, 1232, 1448, 1480))
    if variant == "tiny":
        step = 8
    step = max(step, ((total // 16) + 7) & ~7)   # at most about 16 pieces
    while off < total:
        n = min(step, total - off)
        if rnd.random() < 0.2 and n > 16:
            n = ((n // 2) + 7) & ~7
        out.append([off, n, off + n < total, off])
        off += n
    if variant == "overlap" and len(out) > 1:
        i = rnd.randrange(1, len(out))
        out[i][0] = out[i][3] = max(0, out[i][0] - rnd.choice((8, 16)))
        out[i][1] = min(out[i][1] + 8, total - out[i][0])
    elif variant == "badlast":
        out[-1][2] = rnd.random() < 0.5
        if not out[-1][2] and len(out) > 1:
            out[0][2] = False
    elif variant == "oddmf":
        i = rnd.randrange(len(out))
        out[i][1] = max(1, out[i][1] - rnd.randint(1, 7))
        out[i][2] = True
    elif variant == "huge":
        out[-1][0] = rnd.choice((65528, 65000, 64000, 8184 * 8))
        if rnd.random() < 0.5:     # past 65535 with every piece there
            out[-1][0] = out[-1][3] = max(0, total - out[-1][1])
            out.append([65528, min(total, 64), False, 0])
            out[-2][2] = True
    return [tuple(p) for p in out]


def frag4(packet, pieces):
    ihl = (packet[0] & 15) * 4
    header, data = packet[:ihl], packet[ihl:]
    out = []
    for off, n, more, at in pieces:
        chunk = data[at:at + n]
        h = bytearray(header)
        struct.pack_into("!H", h, 2, ihl + len(chunk))
        struct.pack_into("!H", h, 6, (h[6] << 8 & 0x4000) | (0x2000 if more else 0) | ((off >> 3) & 0x1FFF))
        h[10:12] = b"\0\0"
        struct.pack_into("!H", h, 10, checksum(h))
        out.append(bytes(h) + chunk)
    return out


def frag6(packet, pieces, ident):
    start, pos, nh = _fragmentable(packet)
    header, data = bytearray(packet[:start]), packet[start:]
    header[pos] = 44
    out = []
    for off, n, more, at in pieces:
        chunk = data[at:at + n]
        h = bytearray(header)
        struct.pack_into("!H", h, 4, len(h) - 40 + 8 + len(chunk))
        out.append(bytes(h) + struct.pack("!BBHI", nh, 0, (off & 0xFFF8) | (1 if more else 0), ident) + chunk)
    return out


# ------------------------------------------------------------------ the campaign

class Pair:
    """The engine pair of an epoch, with what is needed to look at each frame's fate."""

    def __init__(self, profile, seed):
        self.profile, self.seed = profile, seed
        self.fast = build_engine(profile, seed, True)
        self.slow = build_engine(profile, seed, False)
        self.checker = Checker.for_engine(self.slow)
        self.errors = []
        self.fast.on_internal_error = lambda packet, exc: self.errors.append(("fast", packet, exc))
        self.slow.on_internal_error = lambda packet, exc: self.errors.append(("slow", packet, exc))
        self.engine_time = 0.0
        self.calls = 0
        self.reordered = False

    def apply(self, kind, arg):
        for eng in (self.fast, self.slow):
            if kind == "adm":
                adm.run(eng, arg.split())
            elif kind == "sysctl":
                eng.config.set(*arg)
            elif kind == "mtu":
                eng.mtu = arg
        if kind == "adm":
            self.checker = Checker.for_engine(self.slow)

    def step(self, frames, now, batch=False):
        """Both engines take `frames`: the fast path engine by receive(), or with `batch`
        all at once by receive_batch(), or with batch "defer" as the live director hands
        it a batch (established first: FastPath.run(defer=later), then receive_batch(later));
        the other engine one by one. Returns (what the engine without the fast path sent
        for each frame, [(kind, signature, detail, traceback)], info)."""
        fast, slow = self.fast, self.slow
        problems = []
        fast._reasm = None
        t0 = time.perf_counter()
        got_fast = None
        try:
            if batch == "defer":
                self.reordered = True
                later = []
                got_fast = fast.fast.run(frames, now, None, defer=later)
                got_fast = got_fast + fast.receive_batch(later, now)
            elif batch:
                got_fast = fast.receive_batch(frames, now)
            else:
                got_fast = fast.receive(frames[0], now)
        except Exception as exc:
            problems.append(("raised",) + _exc_signature(exc) + (_format(exc),))
        per_frame, reasms, unaccounted = [], [], 0
        t1 = time.perf_counter()
        try:
            for frame in frames:
                slow._reasm = None
                held, dropped = slow.fragments_held, sum(slow.drops.values())
                t = time.perf_counter()
                out = slow.receive(frame, now)
                t1 += time.perf_counter() - t
                per_frame.append(out)
                reasms.append(slow._reasm.packet if slow._reasm is not None else None)
                if not out and slow.fragments_held == held and sum(slow.drops.values()) == dropped:
                    unaccounted += 1
        except Exception as exc:
            per_frame = None
            problems.append(("raised",) + _exc_signature(exc) + (_format(exc),))
        self.engine_time += t1 - t0
        self.calls += 2 * len(frames)
        while self.errors:
            which, _, exc = self.errors.pop(0)
            sig, where = _exc_signature(exc)
            problems.append(("internal_error", sig, "%s (fast path %s)" % (where, "on" if which == "fast" else "off"),
                             _format(exc)))
        info = {"passthrough": 0, "unaccounted": unaccounted}
        if per_frame is None or got_fast is None:
            return per_frame or [[] for _ in frames], problems, info
        got = [tx for out in per_frame for tx in out]
        if batch == "defer":
            # Another order: IPv4 IDs come from counters that flows share (test_fastpath.py).
            same = _masked(got) == _masked(got_fast)
            for tx in got_fast:
                hdr = self.checker.inspect(tx.packet)[0]
                if hdr is not None:
                    problems.append(("malformed", hdr, "%s from the fast path, established first: %s" % (
                        hdr, _describe(tx)), None))
        else:
            same = len(got) == len(got_fast) and all(
                bytes(a.nexthop) == bytes(b.nexthop) and bytes(a.packet) == bytes(b.packet)
                for a, b in zip(got, got_fast))
        if not same:
            problems.append(("divergence", "frames" + (" (established first)" if batch == "defer" else ""),
                             _describe_frames(got_fast, got), None))
        elif fast.drops != slow.drops:
            diff = sorted(r for r in set(fast.drops) | set(slow.drops) if fast.drops[r] != slow.drops[r])
            problems.append(("divergence", "drops " + ",".join(diff),
                             "; ".join("%s fast %d slow %d" % (r, fast.drops[r], slow.drops[r]) for r in diff),
                             None))
        checks = [(out, frame, reasm, "off") for out, frame, reasm in zip(per_frame, frames, reasms)]
        if not same and not batch:
            checks.append((got_fast, frames[0], reasms[0], "on"))
        for txs, frame, reasm, which in checks:
            for tx in txs:
                verdict = self.checker.judge(tx, frame, reasm, slow.mtu)
                if verdict is None:
                    continue
                if verdict[0] == "passthrough":
                    info["passthrough"] += 1
                    continue
                problems.append(("malformed", verdict[1], "%s from the engine with the fast path %s: %s" % (
                    verdict[1], which, _describe(tx)), None))
        return per_frame, problems, info

    def compare(self, now):
        """The two engines' whole state must be the same: connections and templates
        (state, flags, timer, counters, real server), the counters of every service and
        real server, the drops, what the ICMP rate limit held back, the fragments held,
        and the sync master's datagrams (taken from both)."""
        a, b = _state(self.fast), _state(self.slow)
        problems = []
        for name, x, y in zip(("connections", "counters", "drops", "icmp_ratelimited", "fragments"), a, b):
            if x != y:
                problems.append(("divergence", "state " + name, _first_difference(x, y), None))
        sa, sb = self.fast.sync_take(now), self.slow.sync_take(now)
        if self.reordered:
            # Established first, the fast path's connections were synced ahead of the
            # general path's: the same entries, in another order, so a buffer may have
            # filled at another entry. Both send what they hold, and start even again.
            self.reordered = False
            sa, sb = _sync_entries(sa + _sync_flush(self.fast)), _sync_entries(sb + _sync_flush(self.slow))
        if sa != sb:
            problems.append(("divergence", "sync datagrams", "fast path on: %d, off: %d; %s" % (
                len(sa), len(sb), _first_difference(sa, sb)), None))
        return problems


def _sync_flush(eng):
    """The sync master's current buffers as datagrams, sent now whatever their age."""
    ms, out = eng.sync_master, []
    for tid, buf in enumerate(ms.bufs if ms is not None else ()):
        if buf is not None:
            out.append((tid, buf.message()))
            ms.bufs[tid] = None
    return out


def _sync_entries(datagrams):
    return sorted(repr(e) for _, d in datagrams for e in syncmsg.decode(d).entries)


def _masked(out):
    return sorted((bytes(t.nexthop), bytes(t.packet[:4]) + b"--" + bytes(t.packet[6:10]) + b"--"
                   + bytes(t.packet[12:]) if t.packet[0] >> 4 == 4 else bytes(t.packet)) for t in out)


def _state(eng):
    conns = [(cp.seq, cp.protocol, cp.state, cp.flags, cp.expires, cp.timeout, cp.in_pkts, cp.daddr, cp.dport,
              cp.n_control, cp.control.seq if cp.control is not None else None) for cp in eng.conn_list()]
    stats = [(st.conns, st.inpkts, st.outpkts, st.inbytes, st.outbytes)
             for st in [eng.tot_stats] + [s.stats for s in eng.services.values()]
             + [d.stats for s in eng.services.values() for d in s.destinations]]
    dests = [(d.activeconns, d.inactconns, d.persistconns, d.flags) for s in eng.services.values()
             for d in s.destinations]
    return conns, (stats, dests), dict(eng.drops), eng.icmp_ratelimited, (eng.fragments_held,
                                                                         len(eng.defrag.queues),
                                                                         len(eng.defrag6.queues))


def _first_difference(x, y):
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        for i, (p, q) in enumerate(zip(x, y)):
            if p != q:
                return "at %d: fast path on %r, off %r" % (i, p, q)
        return "lengths: fast path on %d, off %d" % (len(x), len(y))
    return "fast path on %r, off %r" % (x, y)


def _exc_signature(exc):
    tb = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for fr in reversed(tb):
        if "/lvs/" in fr.filename or "/forwarders/" in fr.filename or "/schedulers/" in fr.filename:
            where = "%s:%d in %s" % ("/".join(fr.filename.split("/")[-2:]), fr.lineno, fr.name)
            break
    return "%s at %s" % (type(exc).__name__, where), "%s: %s at %s" % (type(exc).__name__, exc, where)


def _format(exc):
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _describe(tx):
    p = tx.packet
    return "%d bytes to %s: %s" % (len(p), ntop(tx.nexthop) if len(tx.nexthop) in (4, 16) else repr(tx.nexthop),
                                   bytes(p[:80]).hex())


def _describe_frames(fast, slow):
    return "fast path on sent %d frame(s) [%s], off sent %d [%s]" % (
        len(fast), " ".join(bytes(t.packet).hex()[:120] for t in fast),
        len(slow), " ".join(bytes(t.packet).hex()[:120] for t in slow))


def replay(profile, seed, events):
    """Run `events` [(now, kind, arg)] through a fresh pair; the problems of the last
    frame (the last event), as step() gives them."""
    pair = Pair(profile, seed)
    problems = []
    for now, kind, arg in events:
        if kind == "f":
            _, problems, _ = pair.step([arg], now)
        elif kind in ("b", "d"):
            _, problems, _ = pair.step(arg, now, batch=True if kind == "b" else "defer")
        elif kind == "check":
            problems = pair.compare(now)
        else:
            pair.apply(kind, arg)
            problems = []
    return problems


def minimize(profile, seed, prefix, last, signature, budget):
    """The shortest run of events found in `budget` seconds whose last frame still shows
    `signature`: (events, reproduced)."""
    t_end = time.monotonic() + budget
    tries = [0]

    def shows(frames):
        if time.monotonic() > t_end:
            return False
        tries[0] += 1
        evs = sorted(cfg_kept + frames, key=lambda e: e[0]) + [last[1:]]
        evs = [e[1:] if len(e) == 4 else e for e in evs]
        return any(p[1] == signature for p in replay(profile, seed, evs))

    cfg_kept = [e for e in prefix if e[2] not in ("f", "b", "d", "check")]
    frames = [e for e in prefix if e[2] in ("f", "b", "d", "check")]
    if shows([]):
        cand = []
    else:
        cand = None
        k = 1
        while k < len(frames):
            if shows(frames[-k:]):
                cand = frames[-k:]
                break
            k *= 4
        if cand is None:
            if not shows(frames):
                return [e[1:] for e in prefix] + [last[1:]], False
            cand = frames
        n = 2
        while len(cand) >= 2 and time.monotonic() < t_end:
            chunk = int(math.ceil(len(cand) / float(n)))
            for i in range(n):
                trial = cand[:i * chunk] + cand[(i + 1) * chunk:]
                if trial != cand and shows(trial):
                    cand = trial
                    n = max(n - 1, 2)
                    break
            else:
                if n >= len(cand):
                    break
                n = min(len(cand), n * 2)
    # The lvsadm commands and sysctls it does not need.
    for e in list(cfg_kept):
        if time.monotonic() > t_end:
            break
        cfg_kept.remove(e)
        if not shows(cand):
            cfg_kept.append(e)
    evs = sorted(cfg_kept + cand, key=lambda e: e[0])
    return [e[1:] for e in evs] + [last[1:]], True


class Campaign:
    """A run: `frames` frames over epochs of `epoch_frames`, each on a fresh engine pair
    of the next profile; run() returns the report (a dict, what --json prints)."""

    def __init__(self, frames=1000000, seed=1, time_limit=None, epoch_frames=25000, max_repros=5,
                 minimize_seconds=30.0, progress=None, profiles=None):
        self.frames, self.seed, self.time_limit = frames, seed, time_limit
        self.epoch_frames, self.max_repros, self.minimize_seconds = epoch_frames, max_repros, minimize_seconds
        self.progress = progress
        self.profiles = profiles or PROFILES
        self.findings = {}            # signature -> finding
        self.order = []
        self.totals = Counter()
        self.drops = Counter()
        self.sources = Counter()
        self.outputs = Counter()
        self.ops = Counter()
        self.epochs = Counter()
        self.unaccounted_examples = []

    def run(self):
        start = time.monotonic()
        deadline = start + self.time_limit if self.time_limit else None
        reserve = min(30.0, 0.15 * self.time_limit) if self.time_limit else 0.0
        master = random.Random(self.seed)
        done = epoch = 0
        stopped = False
        engine_time = 0.0
        calls = 0
        fast_hits = 0
        last_progress = start
        while done < self.frames and not stopped:
            profile = self.profiles[epoch % len(self.profiles)]
            eseed = master.getrandbits(32)
            rnd = random.Random(eseed)
            pair = Pair(profile, eseed)
            gen = Generator(rnd)
            trace = []
            now = 1000.0 + rnd.random()
            n = min(self.epoch_frames, self.frames - done)
            i = 0
            self.epochs[profile["name"]] += 1
            broken = False
            next_check = 2000
            while i < n:
                if deadline is not None and (i & 63) == 0:
                    t = time.monotonic()
                    if t >= deadline - (reserve if self.findings else 0.0):
                        stopped = True
                        break
                if rnd.random() < 1.0 / 1000:
                    r = rnd.random()
                    if r < 0.6:
                        kind, arg = "adm", rnd.choice(ADM_OPS)
                    elif r < 0.9:
                        kind, arg = "sysctl", rnd.choice(SYSCTL_OPS)
                    else:
                        kind, arg = "mtu", rnd.choice(MTU_OPS)
                    trace.append((len(trace), now, kind, arg))
                    pair.apply(kind, arg)
                if rnd.random() < 1.0 / 1500:
                    now += rnd.choice((0.5, 2.1, 11.0, 31.0, 61.0, 121.0, 301.0, 901.0))
                else:
                    now += rnd.expovariate(1000.0)
                r = rnd.random()
                batch = False if r >= 0.06 or n - i < 2 else True if r < 0.03 else "defer"
                picked = [gen.next(pair.slow) for _ in range(min(rnd.randint(2, 32), n - i) if batch else 1)]
                frames_ = [p[1] for p in picked]
                if batch:
                    trace.append((len(trace), now, "b" if batch is True else "d", frames_))
                    self.totals["batches" if batch is True else "established_first_batches"] += 1
                else:
                    trace.append((len(trace), now, "f", frames_[0]))
                per_frame, problems, info = pair.step(frames_, now, batch)
                i += len(frames_)
                self.totals["transmits"] += sum(len(o) for o in per_frame)
                self.totals["passthrough"] += info["passthrough"]
                self.totals["unaccounted"] += info["unaccounted"]
                for (source, frame, flow), got in zip(picked, per_frame):
                    self.sources[source] += 1
                    if info["unaccounted"] and not got and len(self.unaccounted_examples) < 5:
                        self.unaccounted_examples.append({"source": source, "frame": frame.hex()})
                    for tx in got:
                        self.outputs[_kind(tx.packet)] += 1
                    if flow is not None and got:
                        flow.observe(got)
                if i >= next_check or i >= n:
                    next_check = i + 2000
                    trace.append((len(trace), now, "check", None))
                    problems = problems + pair.compare(now)
                    self.totals["state_checks"] += 1
                for kind, sig, detail, tb in problems:
                    self._found(kind, sig, detail, tb, profile, eseed, epoch, i, picked[-1][0], trace)
                    if kind in ("divergence", "raised"):
                        broken = True
                if broken:
                    break      # the engines no longer agree: start a new pair
                if self.progress is not None and (i & 1023) == 0:
                    t = time.monotonic()
                    if t - last_progress >= 10.0:
                        last_progress = t
                        self.progress("%d frames, %.0f s, %d problems" % (done + i, t - start, len(self.findings)))
            done += i
            engine_time += pair.engine_time
            calls += pair.calls
            fast_hits += pair.fast.fast.hits
            self.drops.update(pair.slow.drops)
            self.totals["internal_errors"] += pair.slow.drops["internal_error"] + pair.fast.drops["internal_error"]
            self.ops.update(gen.ops)
            epoch += 1
        loop_end = time.monotonic()
        self._minimize(deadline)
        elapsed = time.monotonic() - start
        kinds = Counter()
        for f in self.findings.values():
            kinds[f["kind"]] += f["count"]
        return {
            "interpreter": "%s %s" % (platform.python_implementation(), platform.python_version()),
            "seed": self.seed, "frames_requested": self.frames, "frames": done,
            "stopped_by_time_limit": stopped, "epochs": dict(self.epochs),
            "elapsed_s": round(elapsed, 2), "loop_s": round(loop_end - start, 2),
            "frames_per_s": round(done / max(loop_end - start, 1e-9), 1),
            "engine_calls": calls, "engine_s": round(engine_time, 2),
            "engine_calls_per_s": round(calls / max(engine_time, 1e-9), 1),
            "internal_errors": self.totals["internal_errors"],
            "raised": kinds["raised"], "malformed": kinds["malformed"], "divergences": kinds["divergence"],
            "transmits": self.totals["transmits"], "passthrough": self.totals["passthrough"],
            "unaccounted": self.totals["unaccounted"], "batches": self.totals["batches"],
            "established_first_batches": self.totals["established_first_batches"],
            "state_checks": self.totals["state_checks"], "unaccounted_examples": self.unaccounted_examples,
            "fastpath_hits": fast_hits,
            "drops": dict(self.drops.most_common()), "sources": dict(self.sources.most_common()),
            "outputs": dict(self.outputs.most_common()), "mutations": dict(self.ops.most_common()),
            "findings": [self.findings[s] for s in self.order],
        }

    def _found(self, kind, sig, detail, tb, profile, eseed, epoch, index, source, trace):
        key = (kind, sig)
        f = self.findings.get(key)
        if f is not None:
            f["count"] += 1
            return
        last = [e for e in trace if e[2] in ("f", "b", "d")][-1]
        now, kind_, frame = last[1:]
        if kind_ in ("b", "d"):
            frame = frame[-1]   # the last of the batch; the repro has them all
        self.findings[key] = {
            "kind": kind, "signature": sig, "detail": detail, "count": 1, "source": source,
            "profile": profile["name"], "epoch": epoch, "frame_index": index, "time": now,
            "frame": frame.hex(), "traceback": tb, "config": profile_config(profile, eseed),
            "_trace": list(trace), "_profile": profile, "_seed": eseed,
        }
        self.order.append(key)

    def _minimize(self, deadline):
        n = 0
        for key in self.order:
            f = self.findings[key]
            trace = f.pop("_trace")
            profile, eseed = f.pop("_profile"), f.pop("_seed")
            left = None if deadline is None else deadline - time.monotonic()
            if n >= self.max_repros or (left is not None and left < 1.0):
                f["repro"] = {"minimized": False, "events": [_event_json(trace[-1][1:])],
                              "note": "not reduced (%d events before it in its epoch)" % (len(trace) - 1)}
                continue
            n += 1
            budget = self.minimize_seconds if left is None else min(self.minimize_seconds, left - 0.5)
            events, ok = minimize(profile, eseed, trace[:-1], trace[-1], key[1], budget)
            f["repro"] = {"minimized": ok, "events": [_event_json(e) for e in events]}
            if not ok:
                f["repro"]["note"] = "did not show again on a fresh engine pair; the whole epoch is given"


def _event_json(e):
    now, kind, arg = e
    if kind == "f":
        arg = arg.hex()
    elif kind in ("b", "d"):
        arg = [a.hex() for a in arg]
    return [now, kind, arg]


def _kind(p):
    if not p:
        return "empty"
    if p[0] >> 4 == 4 and len(p) >= 20:
        frag = ((p[6] << 8) | p[7]) & 0x3FFF
        name = {1: "ICMP", 4: "IPIP", 6: "TCP", 17: "UDP", 47: "GRE", 41: "6in4"}.get(p[9], str(p[9]))
        return "IPv4 " + name + (" fragment" if frag else "")
    if p[0] >> 4 == 6 and len(p) >= 40:
        h = walk6(p)
        if h is None:
            return "IPv6 ?"
        name = {58: "ICMPv6", 4: "4in6", 6: "TCP", 17: "UDP", 47: "GRE", 41: "IPv6-in-IPv6"}.get(h[0], str(h[0]))
        return "IPv6 " + name + (" fragment" if h[2] in ("first", "later") else "")
    return "other"


# ------------------------------------------------------------------ output

def format_report(r):
    lines = []
    lines.append("pylvs frame fuzzer, %s, seed %d: %d frames in %.1f s (%.0f frames/s; the engines: %d "
                 "receive calls, %.0f/s)%s" % (
                     r["interpreter"], r["seed"], r["frames"], r["loop_s"], r["frames_per_s"],
                     r["engine_calls"], r["engine_calls_per_s"],
                     " -- stopped by the time limit" if r["stopped_by_time_limit"] else ""))
    lines.append("epochs: " + ", ".join("%s %d" % kv for kv in sorted(r["epochs"].items())))
    lines.append("internal errors: %d   raised: %d   malformed frames: %d   fast/slow divergences: %d" % (
        r["internal_errors"], r["raised"], r["malformed"], r["divergences"]))
    lines.append("transmits: %d (per engine)   fast path hits: %d   passed through with the transport "
                 "checksum they came with: %d   frames neither sent nor counted: %d" % (
                     r["transmits"], r["fastpath_hits"], r["passthrough"], r["unaccounted"]))
    lines.append("frames by source: " + ", ".join("%s %d" % kv for kv in r["sources"].items()))
    lines.append("sent: " + ", ".join("%s %d" % kv for kv in r["outputs"].items()))
    drops = list(r["drops"].items())
    lines.append("drops by reason (%d reasons, %d in all):" % (len(drops), sum(v for _, v in drops)))
    for reason, count in drops:
        lines.append("  %-22s %d" % (reason, count))
    for i, f in enumerate(r["findings"], 1):
        lines.append("")
        lines.append("== problem %d: %s: %s (%d time(s); first at frame %d of epoch %d, profile %s, from %s)" % (
            i, f["kind"], f["signature"], f["count"], f["frame_index"], f["epoch"], f["profile"], f["source"]))
        if f["detail"]:
            lines.append(f["detail"])
        lines.append("frame: " + f["frame"])
        cfg = dict(f["config"])
        cfg["commands"] = "(the %d ipvsadm lines below)" % len(cfg["commands"])
        lines.append("engine: " + json.dumps(cfg))
        rep = f.get("repro")
        if rep:
            lines.append("repro (%s, %d events; replay with --replay on the JSON of this problem):" % (
                "reduced" if rep["minimized"] else rep.get("note", "not reduced"), len(rep["events"])))
            for now, kind, arg in rep["events"][-60:]:
                if kind in ("b", "d"):
                    arg = "%sbatch of %d: %s" % ("established-first " if kind == "d" else "", len(arg),
                                                  " ".join(arg))
                lines.append("  t=%.6f %s %s" % (now, kind, arg))
        if f["traceback"]:
            lines.append(f["traceback"].rstrip())
    if r["findings"]:
        lines.append("")
        lines.append("the engines' ipvsadm lines (those of the sync and defense profiles leave out the"
                     " real servers of the other family and end with --start-daemon):")
        lines.extend("  " + c for c in COMMANDS)
    return "\n".join(lines)


def replay_file(path):
    """--replay: run a problem's repro (a problem object of the JSON report, or the report)."""
    with open(path) as fh:
        data = json.load(fh)
    found = data["findings"] if "findings" in data else [data]
    for f in found:
        cfg = f["config"]
        profile = dict(next(p for p in PROFILES if p["name"] == cfg["profile"]))
        profile.update({"engine": cfg["engine"], "sysctls": cfg["sysctls"], "commands": cfg["commands"],
                        "fwmark": [tuple(r) for r in cfg["fwmark"]]})
        events = [(now, kind, bytes.fromhex(arg) if kind == "f" else [bytes.fromhex(a) for a in arg]
                   if kind in ("b", "d") else tuple(arg) if kind == "sysctl" else arg)
                  for now, kind, arg in f["repro"]["events"]]
        problems = replay(profile, cfg["seed"], events)
        print("%s: %d events -> %s" % (f["signature"], len(events),
                                       "; ".join("%s: %s" % (p[0], p[1]) for p in problems) or "no problem"))
        for p in problems:
            if p[3]:
                print(p[3].rstrip())
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.fuzz.frames", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1000000, help="frames to generate (default 1000000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                    help="stop by then, whatever is left (a hard bound, reduction included)")
    ap.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    ap.add_argument("--epoch-frames", type=int, default=25000, help="frames per engine pair (default 25000)")
    ap.add_argument("--max-repros", type=int, default=5, help="problems to reduce to a short repro")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--replay", metavar="FILE", help="run the repro of a problem from a JSON report")
    args = ap.parse_args(argv)
    if args.replay:
        return replay_file(args.replay)
    progress = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    report = Campaign(frames=args.frames, seed=args.seed, time_limit=args.time_limit,
                      epoch_frames=args.epoch_frames, max_repros=args.max_repros, progress=progress).run()
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=False))
    else:
        print(format_report(report))
    bad = report["internal_errors"] or report["raised"] or report["malformed"] or report["divergences"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
