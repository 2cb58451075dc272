"""Destination hashing: net/netfilter/ipvs/ip_vs_dh.c.

A table of 2**IP_VS_DH_TAB_BITS (8) buckets is filled by walking the dest
list cyclically, one bucket per dest (weights are ignored here), and rebuilt
on every add/del/upd (ip_vs_dh_reassign). A packet's bucket is
hash_32(ntohl(daddr), 8). If that bucket's dest is not available, has weight
<= 0 or is overloaded, the kernel returns no dest: it never looks elsewhere.
"""

from lvs.flags import IP_VS_DEST_F_AVAILABLE, IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import addr_u32, hash_32, kernel_order

IP_VS_DH_TAB_BITS = 8
IP_VS_DH_TAB_SIZE = 1 << IP_VS_DH_TAB_BITS


@register_scheduler
class DestinationHashing(Scheduler):
    name = "dh"

    def __init__(self, svc, config=None):
        super().__init__(svc, config)
        self._reassign(svc)

    def _reassign(self, svc, dest=None):
        dests = list(kernel_order(svc))
        n = len(dests)
        self.buckets = [dests[i % n] for i in range(IP_VS_DH_TAB_SIZE)] if n else None

    add_dest = del_dest = upd_dest = _reassign

    def schedule(self, svc, pkt, now):
        if self.buckets is None:
            return None
        dest = self.buckets[hash_32(addr_u32(pkt.daddr), IP_VS_DH_TAB_BITS)]
        if (not dest.flags & IP_VS_DEST_F_AVAILABLE or dest.weight <= 0
                or dest.flags & IP_VS_DEST_F_OVERLOAD):
            return None
        return dest
