"""`lvs daemon --workers N`: several processes share the interfaces (PACKET_FANOUT).

One Python process forwards on one core. With --workers N the daemon forks
N - 1 workers after it has attached; every process (the daemon itself is
worker 0) opens its own AF_PACKET sockets on each interface and joins two
fanout groups per interface, one for IPv4 and one for IPv6 (a group's
members share one EtherType), so the kernel hands each frame to exactly one
of them. Each holds a full copy of the tables and its own connection table,
fast path and timers.

Which process gets a frame is decided by a classic BPF program the daemon
installs on each group (PACKET_FANOUT_CBPF) and rewrites when the tables
change: it hashes the client's address, which is the source address of a
packet, except for packets from a NAT real server, whose destination is the
client. So both directions of a NAT connection, every fragment of a
datagram and all the connections of one client (persistence templates
included: the address is masked with the shortest persistence netmask, or
IPv6 prefix, of the tables) meet in the same process. An IPv6 address is
folded to one word (the XOR of its four, masked) before the same hash.

The daemon keeps the control socket. A command that changes the tables is
carried out by it and then by every worker, in the same order; listings add
the workers' counters (connections per real server, packets, bytes, rates)
to the daemon's own, and `-Lc` lists every process's connections. ARP, and
IPv6 Neighbour Discovery (a socket whose filter takes nothing else), are
received by every process on sockets outside the groups (each must learn the
neighbours it sends to); only the daemon answers for the VIPs. The host
changes (nftables, offloads) are the daemon's alone.

Limits, as for several directors: each process schedules only its own
connections, so rr and wrr rotate per process and lc/wlc see only their
process's counts; the choice for a client stays the kernel's choice within
its process. ICMP errors about a connection reach the process that holds it
only if they come from the client's side or from a NAT real server.
"""

import ctypes
import json
import os
import signal
import socket
import struct
import time

SOL_PACKET = 263
SO_ATTACH_FILTER = 26
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_CBPF = 6

SKF_NET_OFF = -0x100000
MAX_NAT_ADDRS = 250        # jump offsets of classic BPF are 8 bits
MAX_NAT_ADDRS6 = 30        # 8 instructions each: the same bound for IPv6
GOLDEN_RATIO_32 = 0x9E3779B1

# classic BPF opcodes
_LD_W_ABS = 0x20
_LD_B_ABS = 0x30
_JEQ_K = 0x15
_JGT_K = 0x25
_JGE_K = 0x35
_JA = 0x05
_AND_K = 0x54
_XOR_X = 0xAC
_TAX = 0x07
_MUL_K = 0x24
_RSH_K = 0x74
_RET_A = 0x16
_RET_K = 0x06


class FanoutError(Exception):
    """The workers could not be started."""


def group_id(index, family=4):
    """A fanout group id of ours for interface `index` and an address family (ids are
    per network namespace)."""
    return ((os.getpid() & 0x7FF) << 5 | (index & 0xF) << 1 | (1 if family == 6 else 0)) & 0xFFFF


def join(sock, group):
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, (group & 0xFFFF) | PACKET_FANOUT_CBPF << 16)


def client_hash_program(nat_addrs, mask):
    """The classic BPF program: A = source address, or the destination if the source is
    one of `nat_addrs` (4-byte addresses); masked, multiplied, the high half returned.
    The kernel takes the result modulo the number of processes."""
    addrs = sorted(nat_addrs)[:MAX_NAT_ADDRS]
    k = len(addrs)
    prog = [(_LD_W_ABS, 0, 0, (SKF_NET_OFF + 12) & 0xFFFFFFFF)]
    for i, addr in enumerate(addrs):
        # instruction 1 + i; on a match jump to the destination load at 1 + k + 1
        prog.append((_JEQ_K, k - i, 0, int.from_bytes(addr, "big")))
    prog.append((_JA, 0, 0, 1))
    prog.append((_LD_W_ABS, 0, 0, (SKF_NET_OFF + 16) & 0xFFFFFFFF))
    prog.append((_AND_K, 0, 0, mask & 0xFFFFFFFF))
    prog.append((_MUL_K, 0, 0, GOLDEN_RATIO_32))
    prog.append((_RSH_K, 0, 0, 16))
    prog.append((_RET_A, 0, 0, 0))
    return prog


def client_hash_program6(nat_addrs, prefix):
    """The IPv6 groups' program: the source address, or the destination if the source is
    one of `nat_addrs` (16-byte addresses); its words masked to `prefix` bits and folded
    by XOR, then hashed as for IPv4."""
    addrs = sorted(nat_addrs)[:MAX_NAT_ADDRS6]
    k = len(addrs)
    net = SKF_NET_OFF & 0xFFFFFFFF
    prog = []
    for i, addr in enumerate(addrs):
        # a block of 8 at 8i; a mismatch goes on to the next block, a match to the
        # destination's hash at 8k + 17
        for w in range(4):
            prog.append((_LD_W_ABS, 0, 0, net + 8 + 4 * w))
            word = int.from_bytes(addr[4 * w:4 * w + 4], "big")
            if w < 3:
                prog.append((_JEQ_K, 0, 6 - 2 * w, word))
            else:
                prog.append((_JEQ_K, 8 * k + 17 - (8 * i + 8), 0, word))
    masks = []
    for w in range(4):
        bits = min(32, max(0, prefix - 32 * w))
        masks.append(((1 << bits) - 1) << (32 - bits))
    for base in (8, 24):        # the source's hash (17 instructions), then the destination's
        for w in range(4):
            prog.append((_LD_W_ABS, 0, 0, net + base + 4 * w))
            prog.append((_AND_K, 0, 0, masks[w]))
            if w:
                prog.append((_XOR_X, 0, 0, 0))
            if w < 3:
                prog.append((_TAX, 0, 0, 0))
        prog.append((_MUL_K, 0, 0, GOLDEN_RATIO_32))
        prog.append((_RSH_K, 0, 0, 16))
        prog.append((_RET_A, 0, 0, 0))
    return prog


def nd_filter():
    """A socket filter taking Neighbour Solicitations and Advertisements only (ICMPv6 135
    and 136 right after the fixed header, as ND must be): the socket every process reads
    them on. (Router messages and redirects stay with the IPv6 group, one process.)"""
    net = SKF_NET_OFF & 0xFFFFFFFF
    return [(_LD_B_ABS, 0, 0, net + 6), (_JEQ_K, 0, 4, 58),
            (_LD_B_ABS, 0, 0, net + 40), (_JGE_K, 0, 2, 135), (_JGT_K, 1, 0, 136),
            (_RET_K, 0, 0, 0x40000), (_RET_K, 0, 0, 0)]


def _fprog(prog):
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    return buf, struct.pack("=HxxxxxxQ", len(prog), ctypes.addressof(buf))


def set_program(sock, prog):
    """PACKET_FANOUT_DATA: the group's program, replaced at once for every member."""
    buf, fprog = _fprog(prog)
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)


def attach_filter(sock, prog):
    """SO_ATTACH_FILTER: what the socket receives at all."""
    buf, fprog = _fprog(prog)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


# ---------------------------------------------------------------- counters across processes

def _svc_id(svc):
    if svc.fwmark:
        return "f%d/%d" % (svc.fwmark, svc.af)   # the same mark may name a service per family
    return "%d/%s/%d" % (svc.protocol, svc.addr.hex(), svc.port)


def _stats_tuple(st):
    return [list(st.kstats), list(st.zero), [st.cps, st.inpps, st.outpps, st.inbps, st.outbps]]


def tally(engine, conns=False):
    """What a worker adds to a listing: per service and real server, the counts and stats;
    under "_proc" its totals, live counters, drops, fast-path hits and table entries (for
    --procfs and --metrics), and with `conns` its rows of /proc/net/ip_vs_conn{,_sync}."""
    from .flags import IP_VS_CONN_F_TEMPLATE
    templates = sum(1 for cp in engine.conntab.conns.values() if cp.flags & IP_VS_CONN_F_TEMPLATE)
    live = engine.tot_stats.counters()
    proc = {"tot": _stats_tuple(engine.tot_stats), "live": list(live), "drops": dict(engine.drops),
            "fast": 0 if engine.fast is None else engine.fast.hits,
            "entries": [len(engine.conntab.conns) - templates, templates]}
    if conns:
        from . import procfs
        proc["conn"] = procfs.ip_vs_conn(engine).split("\n", 1)[1]
        proc["conn_sync"] = procfs.ip_vs_conn_sync(engine).split("\n", 1)[1]
    out = {"_proc": proc}
    for svc in engine.services.values():
        out[_svc_id(svc)] = [_stats_tuple(svc.stats),
                             {"%s/%d" % (d.addr.hex(), d.port):
                              [d.activeconns, d.inactconns, d.persistconns, _stats_tuple(d.stats)]
                              for d in svc.destinations}]
    return out


def _add_stats(st, t):
    kstats, zero, rates = t
    st.kstats = tuple(a + b for a, b in zip(st.kstats, kstats))
    st.zero = tuple(a + b for a, b in zip(st.zero, zero))
    st.cps += rates[0]
    st.inpps += rates[1]
    st.outpps += rates[2]
    st.inbps += rates[3]
    st.outbps += rates[4]


def add_tally(engine, t):
    """Add a worker's tally into `engine` (a scratch copy made for one listing); its "_proc"
    part is added to the totals and kept in engine.worker_parts."""
    proc = t.get("_proc")
    if proc is not None:
        _add_stats(engine.tot_stats, proc["tot"])
        engine.worker_parts.append(proc)
    for svc in engine.services.values():
        entry = t.get(_svc_id(svc))
        if entry is None:
            continue
        _add_stats(svc.stats, entry[0])
        for d in svc.destinations:
            de = entry[1].get("%s/%d" % (d.addr.hex(), d.port))
            if de is None:
                continue
            d.activeconns += de[0]
            d.inactconns += de[1]
            d.persistconns += de[2]
            _add_stats(d.stats, de[3])


def merge_connection_listings(texts):
    """`-Lc` of every process: the first one's heading, then all their rows."""
    first, rest = texts[0], texts[1:]
    return first + "".join(t.split("\n", 2)[2] if t.count("\n") >= 2 else "" for t in rest)


# ---------------------------------------------------------------- the processes

def _die_with_parent():
    """PR_SET_PDEATHSIG: a worker ends with the daemon, even after a SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Workers:
    """The daemon's side: the workers' PIDs and control channels."""

    def __init__(self):
        self.procs = []          # (pid, socket)

    def spawn(self, count, run_worker):
        """Fork count workers; run_worker(index, sock) runs in each and never returns."""
        for index in range(1, count):
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:
                ours.close()
                for _, s in self.procs:
                    s.close()
                _die_with_parent()
                status = 1
                try:
                    run_worker(index, theirs)
                    status = 0
                except BaseException:
                    import traceback
                    traceback.print_exc()
                finally:
                    os._exit(status)
            theirs.close()
            ours.settimeout(30.0)
            self.procs.append((pid, ours))
            if not _answer(ours, {"op": "ping"}):
                raise FanoutError("worker %d did not start" % index)

    def ask(self, message):
        """The same request to every worker, in order; their answers (None: no answer)."""
        return [_answer(s, message) for _, s in self.procs]

    def stop(self, grace=5.0):
        for _, s in self.procs:
            try:
                s.sendall(json.dumps({"op": "stop"}).encode() + b"\n")
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for pid, s in self.procs:
            while True:
                try:
                    done = os.waitpid(pid, os.WNOHANG)[0] == pid
                except ChildProcessError:
                    done = True
                if done:
                    break
                if time.monotonic() > deadline:
                    try:
                        os.kill(pid, signal.SIGKILL)   # our own child, by its PID
                        os.waitpid(pid, 0)
                    except (ProcessLookupError, ChildProcessError):
                        pass
                    break
                time.sleep(0.02)
            s.close()
        self.procs = []


def _answer(sock, message):
    try:
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 20)
            if not chunk:
                return None
            data += chunk
        return json.loads(data.decode())
    except (OSError, ValueError):
        return None


class Channel:
    """A worker's side of its control channel: JSON lines in, JSON lines out."""

    def __init__(self, sock, handle, on_eof):
        self.sock = sock
        self.handle = handle
        self.on_eof = on_eof
        self.buf = b""
        sock.setblocking(False)

    def fileno(self):
        return self.sock.fileno()

    def readable(self):
        try:
            chunk = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.on_eof()
            return
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            answer = self.handle(json.loads(line.decode()))
            self.sock.setblocking(True)
            try:
                self.sock.sendall(json.dumps(answer).encode() + b"\n")
            finally:
                self.sock.setblocking(False)
