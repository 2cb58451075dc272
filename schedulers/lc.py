"""Least-connection: net/netfilter/ipvs/ip_vs_lc.c.

Picks the dest with the least overhead = activeconns*256 + inactconns
(ip_vs_dest_conn_overhead), skipping overloaded and weight-0 dests. Weights
play no other part. Ties go to the first in the kernel's list order (the
comparison is a strict <).
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import kernel_order


@register_scheduler
class LeastConnection(Scheduler):
    name = "lc"

    def schedule(self, svc, pkt, now):
        least = None
        loh = 0
        for dest in kernel_order(svc):
            if dest.flags & IP_VS_DEST_F_OVERLOAD or dest.weight == 0:
                continue
            doh = (dest.activeconns << 8) + dest.inactconns
            if least is None or doh < loh:
                least, loh = dest, doh
        return least
