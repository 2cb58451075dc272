"""Maglev hashing: net/netfilter/ipvs/ip_vs_mh.c.

Table: IP_VS_MH_TAB_SIZE = primes[CONFIG_IP_VS_MH_TAB_INDEX - 8] with the
Kconfig default index 12, so 4093 slots; IP_VS_MH_TAB_BITS = 12 / 2 = 6.

Hash: ip_vs_mh_hashkey(addr, port, key, offset) is hsiphash of the u32
v = offset + ntohs(port) + ntohl(addr) (mod 2**32). The two keys come from
generate_hash_secret, which is NOT random in the kernel: hash1 is
{2654435761, 2654435761} and hash2 {2654446892, 2654446892} for every
service. hsiphash on a 64-bit kernel is SipHash-1-3 (see _hashing), so the
table below is slot-for-slot the kernel's for the same dest list order and
last_weights.

Table build (ip_vs_mh_reassign, on init and on every add/del/upd):
  gcd    = gcd of the dests' last_weight > 0 (0 if none)
  rshift = max(0, fls(max last_weight / gcd) - 6)
  per dest, in list order (newest first):
    offset = hash(dest addr, dest port, hash1, 0) % 4093
    skip   = hash(dest addr, dest port, hash2, 0) % 4092 + 1
    turns  = ((last_weight / gcd) >> rshift) or (last_weight != 0)
  then rounds over the list: each dest with turns >= 1 claims `turns`
  slots in a row, each its next free preferred slot (perm += skip mod
  4093), until all 4093 slots are taken. With gcd 0 the table is emptied.
The table is built from last_weight (the latest non-zero weight), while
availability is read from the live weight: a dest edited to weight 0 keeps
its slots but is unavailable (is_unavailable: weight <= 0 or overloaded).
More dests than slots: reassign fails with -EINVAL; from add/del/upd_dest
ip_vs_ctl ignores it, so the old table stays; at init_service it fails the
bind (ConfigError here).

Lookup: ihash = hash(saddr, port, hash1, 0) % 4093 (daddr/dport for an
ICMP error's inverse packet); port is the source port only with mh-port
(IP_VS_SVC_F_SCHED2) and only for TCP/UDP/SCTP, else 0. Without
mh-fallback (IP_VS_SVC_F_SCHED1) an unavailable table dest means no dest.
With it the kernel probes roffset = (k + ihash) % 4093 for k = 0..4092 and
rehashes with offset roffset each time (so the first probe is NOT ihash
again): slot = hash(saddr, port, hash1, roffset) % 4093.
"""

from math import gcd

from lvs.errors import ConfigError
from lvs.flags import IP_VS_DEST_F_OVERLOAD, IP_VS_SVC_F_SCHED1, IP_VS_SVC_F_SCHED2
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import addr_u32, hsiphash_1u32, kernel_order

IP_VS_SVC_F_SCHED_MH_FALLBACK = IP_VS_SVC_F_SCHED1
IP_VS_SVC_F_SCHED_MH_PORT = IP_VS_SVC_F_SCHED2

PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
CONFIG_IP_VS_MH_TAB_INDEX = 12          # Kconfig default
IP_VS_MH_TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX // 2
IP_VS_MH_TAB_SIZE = PRIMES[CONFIG_IP_VS_MH_TAB_INDEX - 8]

# generate_hash_secret: fixed constants, the same for every service.
HASH1 = (2654435761, 2654435761)
HASH2 = (2654446892, 2654446892)

_PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: ports at the same offset

# ipvsadm's text for EINVAL (a failed init_service).
EINVAL_TEXT = "Invalid operation.  Possibly wrong module version, address not unicast, ..."


def mh_hashkey(addr, port, key, offset=0):
    """ip_vs_mh_hashkey for IPv4: hsiphash(offset + ntohs(port) + ntohl(addr))."""
    return hsiphash_1u32((offset + port + addr_u32(addr)) & 0xFFFFFFFF, key)


def _unavailable(dest):
    return dest.weight <= 0 or dest.flags & IP_VS_DEST_F_OVERLOAD


def _fls(x):
    return x.bit_length()


def mh_gcd_weight(dests):
    """ip_vs_mh_gcd_weight: gcd of the positive last_weights, 0 if none."""
    g = 0
    for dest in dests:
        w = dest.last_weight
        if w > 0:
            g = gcd(w, g) if g > 0 else w
    return g


def mh_shift_weight(dests, g):
    """ip_vs_mh_shift_weight: keep (max weight / gcd) within TAB_BITS bits."""
    if g < 1:
        return 0
    weight = 0
    for dest in dests:
        if dest.last_weight > weight:
            weight = dest.last_weight
    shift = _fls(weight // g) - IP_VS_MH_TAB_BITS
    return shift if shift >= 0 else 0


def build_table(dests, size=IP_VS_MH_TAB_SIZE, addr_len=16):
    """ip_vs_mh_permutate + ip_vs_mh_populate over `dests` in list order.

    Returns a list of `size` dests, or None when gcd < 1 (no dest with a
    positive last_weight: the kernel resets every slot to NULL).
    """
    g = mh_gcd_weight(dests)
    if g < 1:
        return None
    rshift = mh_shift_weight(dests, g)
    setup = []
    for dest in dests:
        # Hashed as the service's family (addr_len its address length): an
        # IPv6 tunnel server of an IPv4 service counts by its first word.
        addr = dest.addr[:addr_len]
        offset = mh_hashkey(addr, dest.port, HASH1) % size
        skip = mh_hashkey(addr, dest.port, HASH2) % (size - 1) + 1
        lw = dest.last_weight
        turns = (lw // g) >> rshift  # lw >= 0: C's division, exactly
        if not turns:
            turns = 1 if lw != 0 else 0
        setup.append([dest, offset, skip, turns])
    table = [None] * size
    taken = bytearray(size)
    n = 0
    # Each outer round restarts at the list head; a dest with turns >= 1
    # claims `turns` consecutive picks before the walk moves on.
    while True:
        for ds in setup:
            dest, perm, skip, turns = ds
            if turns < 1:
                continue  # added with zero weight: no slots
            for _ in range(turns):
                while taken[perm]:
                    perm += skip
                    if perm >= size:
                        perm -= size
                taken[perm] = 1
                table[perm] = dest
                n += 1
                if n == size:
                    return table
            ds[1] = perm


@register_scheduler
class MaglevHashing(Scheduler):
    name = "mh"

    def __init__(self, svc, config=None):
        super().__init__(svc, config)
        self.table = None
        self.members = ()
        if len(svc.destinations) > IP_VS_MH_TAB_SIZE:
            # ip_vs_mh_init_svc fails: the service add (or the scheduler
            # change of an edit, which then rebinds the old one) fails.
            raise ConfigError(EINVAL_TEXT)
        self._reassign(svc)

    def _reassign(self, svc, dest=None):
        dests = list(kernel_order(svc))
        if len(dests) > IP_VS_MH_TAB_SIZE:
            return  # -EINVAL, ignored by the caller: the old table stays
        self.table = build_table(dests, addr_len=len(svc.addr))
        # The dests that own slots (the fallback walk can only find these).
        if self.table is None:
            self.members = ()
        else:
            self.members = tuple({id(d): d for d in self.table}.values())

    add_dest = del_dest = upd_dest = _reassign

    def done_service(self, svc):
        self.table = None
        self.members = ()

    def schedule(self, svc, pkt, now):
        table = self.table
        if table is None:
            return None
        inverse = getattr(pkt, "inverse", False)
        addr = pkt.daddr if inverse else pkt.saddr
        port = 0
        if svc.flags & IP_VS_SVC_F_SCHED_MH_PORT and pkt.protocol in _PORT_PROTOCOLS:
            port = pkt.dport if inverse else pkt.sport
        base = port + addr_u32(addr)
        size = IP_VS_MH_TAB_SIZE
        ihash = hsiphash_1u32(base & 0xFFFFFFFF, HASH1) % size
        dest = table[ihash]
        if not _unavailable(dest):
            return dest
        if not svc.flags & IP_VS_SVC_F_SCHED_MH_FALLBACK:
            return None
        # ip_vs_mh_get_fallback. Every slot is filled, so the kernel's walk
        # ends only on an available dest or after all 4093 probes; when no
        # slot owner is available the answer is NULL without probing.
        if all(_unavailable(d) for d in self.members):
            return None
        for offset in range(size):
            roffset = (offset + ihash) % size
            dest = table[hsiphash_1u32((roffset + base) & 0xFFFFFFFF, HASH1) % size]
            if not _unavailable(dest):
                return dest
        return None
