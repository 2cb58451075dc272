"""What several test modules share: addresses, a scheduler rig, golden-frame decoding."""

import re
import struct
from collections import Counter

from lvs.flags import IP_VS_DEST_F_AVAILABLE, IP_VS_DEST_F_OVERLOAD
from lvs.registry import scheduler_class
from lvs.service import Dest, Service

VIP = b"\xcb\x00\x71\xc8"  # 203.0.113.200


def ip(text):
    return bytes(int(x) for x in text.split("."))


def ntoa(raw):
    return ".".join(str(b) for b in raw)


def seq(text):
    return text.split()


def ipv4_of(frame):
    """The IPv4 packet inside an Ethernet frame record (link padding trimmed)."""
    raw = bytes.fromhex(frame["hex"])
    assert raw[12:14] == b"\x08\x00"
    packet = raw[14:]
    return packet[:struct.unpack_from("!H", packet, 2)[0]]


class Pkt:
    """What a scheduler sees of a packet."""

    __slots__ = ("saddr", "daddr", "sport", "dport", "protocol")

    def __init__(self, saddr=b"\xcb\x00\x71\x04", daddr=VIP, sport=1000, dport=80, protocol=6):
        self.saddr, self.daddr, self.sport, self.dport, self.protocol = (
            saddr, daddr, sport, dport, protocol)


class Rig:
    """A service with one scheduler; dests named by letters for readability.

    Dests are linked at the head of the list as the engine (and the kernel)
    links them, so dests added A, B, C are walked C, B, A.
    """

    def __init__(self, name, flags=0, config=None, protocol=6):
        self.svc = Service(protocol, VIP, 80)
        self.svc.flags = flags
        self.sched = scheduler_class(name)(self.svc, config)
        self.names = {}
        self.by_name = {}

    def add(self, name, weight=1, addr=None, act=0, inact=0, overload=False, u_threshold=0, port=80):
        addr = addr or bytes([192, 0, 2, len(self.names) + 1])
        d = Dest(self.svc, addr, port)
        d.weight = d.last_weight = weight
        d.u_threshold = u_threshold
        d.flags |= IP_VS_DEST_F_AVAILABLE
        if overload:
            d.flags |= IP_VS_DEST_F_OVERLOAD
        d.activeconns, d.inactconns = act, inact
        self.svc.destinations.insert(0, d)
        self.names[id(d)] = name
        self.by_name[name] = d
        self.sched.add_dest(self.svc, d)
        return d

    def __getitem__(self, name):
        return self.by_name[name]

    def delete(self, name):
        d = self.by_name.pop(name)
        self.svc.destinations.remove(d)
        d.flags &= ~IP_VS_DEST_F_AVAILABLE  # __ip_vs_unlink_dest
        self.sched.del_dest(self.svc, d)

    def weight(self, name, w):
        """Set the weight (last_weight untouched) and tell the scheduler."""
        self.by_name[name].weight = w
        self.sched.upd_dest(self.svc, self.by_name[name])

    def edit(self, name, weight):
        """ip_vs_edit_dest: last_weight follows only a non-zero weight."""
        d = self.by_name[name]
        if weight != 0:
            d.last_weight = weight
        d.weight = weight
        self.sched.upd_dest(self.svc, d)

    def overload(self, name, on=True):
        d = self.by_name[name]
        d.flags = d.flags | IP_VS_DEST_F_OVERLOAD if on else d.flags & ~IP_VS_DEST_F_OVERLOAD

    def pick(self, pkt=None, now=0.0):
        d = self.sched.schedule(self.svc, pkt or Pkt(), now)
        return None if d is None else self.names[id(d)]

    def picks(self, n, pkt=None, now=0.0):
        return [self.pick(pkt, now) for _ in range(n)]

    def table_names(self):
        return [None if d is None else self.names.get(id(d), "?") for d in self.sched.table]

    def shares(self):
        return dict(Counter(self.table_names()))


class FakePort:
    """A port of lvs/ports for the director's tests: what it sends is kept."""
    kind = "ether"
    protocol = 0x0003

    def __init__(self, name="eth0", mac=bytes.fromhex("020000000003")):
        self.name, self.mac = name, mac
        self.sent = []
        self.counters = {"rx": 0, "tx": 0, "tx_errors": 0, "rx_ring_drops": 0}

    def send(self, frame):
        self.sent.append(bytes(frame))
        return True

    def ring_drops(self):
        return 0

    backlog = False     # what backlogged() answers: more than half the ring waits

    def backlogged(self):
        return self.backlog


# ipvsadm transcripts recorded by the kernel oracle (tests/test_adm.py, test_cli_v6.py)

def args_of(argv):
    """A recorded argv -> adm.run's argv (ipvsadm-save is -S, ipvsadm-restore -R)."""
    if argv[0] == "ipvsadm-save":
        return ["-S"] + list(argv[1:])
    if argv[0] == "ipvsadm-restore":
        return ["-R"] + list(argv[1:])
    assert argv[0] == "ipvsadm"
    return list(argv[1:])


def want(step):
    return step["stdout"], step["stderr"], step["rc"]


def steps_of(seq):
    return list(seq["transcript"]) + list(seq.get("final", {}).values())


def needs_names(argv):
    """A listing or save without -n: its output depends on the host's name tables."""
    args = args_of(argv)
    if not args:
        return True
    if not re.match(r"(-[lLS]\w*|--list|--save)$", args[0]):
        return False
    return not any(a in ("-n", "--numeric") or re.match(r"-[A-Za-z]*n", a) for a in args)
