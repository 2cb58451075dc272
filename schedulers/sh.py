"""Source hashing: net/netfilter/ipvs/ip_vs_sh.c.

A table of 2**IP_VS_SH_TAB_BITS (8) buckets is tiled by walking the dest list
cyclically, each dest filling `weight` consecutive buckets (at least one,
even at weight 0), rebuilt on every add/del/upd (ip_vs_sh_reassign).
Bucket = (offset + hash_32(port + ntohl(saddr), 8)) & 255; the port is the
source port only with the sh-port flag (and only for TCP/UDP/SCTP), else 0.
A dest with weight <= 0 or overloaded is unavailable (is_unavailable):
without sh-fallback that means no dest; with it the table is probed at
offsets ihash + k, which the kernel adds to the hash again, so probe k looks
at bucket (2*ihash + k) & 255 (ip_vs_sh_get_fallback).
"""

from lvs.flags import (
    IP_VS_DEST_F_OVERLOAD, IP_VS_SVC_F_SCHED_SH_FALLBACK, IP_VS_SVC_F_SCHED_SH_PORT,
)
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import addr_u32, hash_32, kernel_order

IP_VS_SH_TAB_BITS = 8
IP_VS_SH_TAB_SIZE = 1 << IP_VS_SH_TAB_BITS
IP_VS_SH_TAB_MASK = IP_VS_SH_TAB_SIZE - 1
_PORT_PROTOCOLS = (6, 17, 132)  # TCP, UDP, SCTP: ports at the same offset


def _unavailable(dest):
    return dest.weight <= 0 or dest.flags & IP_VS_DEST_F_OVERLOAD


@register_scheduler
class SourceHashing(Scheduler):
    name = "sh"

    def __init__(self, svc, config=None):
        super().__init__(svc, config)
        self._reassign(svc)

    def _reassign(self, svc, dest=None):
        dests = list(kernel_order(svc))
        if not dests:
            self.buckets = None
            return
        buckets = []
        i = count = 0
        for _ in range(IP_VS_SH_TAB_SIZE):
            d = dests[i]
            buckets.append(d)
            count += 1
            if count >= d.weight:  # move on once the weight is filled
                i = (i + 1) % len(dests)
                count = 0
        self.buckets = buckets

    add_dest = del_dest = upd_dest = _reassign

    def schedule(self, svc, pkt, now):
        buckets = self.buckets
        if buckets is None:
            return None
        # An ICMP error scheduled for its embedded packet hashes the other end.
        inverse = getattr(pkt, "inverse", False)
        addr = pkt.daddr if inverse else pkt.saddr
        port = 0
        if svc.flags & IP_VS_SVC_F_SCHED_SH_PORT and pkt.protocol in _PORT_PROTOCOLS:
            port = pkt.dport if inverse else pkt.sport
        ihash = hash_32((port + addr_u32(addr)) & 0xFFFFFFFF, IP_VS_SH_TAB_BITS)
        dest = buckets[ihash]
        if not _unavailable(dest):
            return dest
        if not svc.flags & IP_VS_SVC_F_SCHED_SH_FALLBACK:
            return None
        for offset in range(IP_VS_SH_TAB_SIZE):
            roffset = (offset + ihash) % IP_VS_SH_TAB_SIZE
            dest = buckets[(roffset + ihash) & IP_VS_SH_TAB_MASK]
            if not _unavailable(dest):
                return dest
        return None
