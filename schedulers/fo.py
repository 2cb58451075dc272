"""Weighted failover: net/netfilter/ipvs/ip_vs_fo.c.

All traffic goes to the non-overloaded dest with the highest weight. The
walk (kernel list order, newest first) starts from hw = 0 and replaces the
choice only on a strictly greater weight, so a tie keeps the earlier dest
in list order and a weight-0 dest is never chosen. Connection counts play
no part.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import kernel_order


@register_scheduler
class WeightedFailover(Scheduler):
    name = "fo"

    def schedule(self, svc, pkt, now):
        hweight = None
        hw = 0
        for dest in kernel_order(svc):
            if not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight > hw:
                hweight = dest
                hw = dest.weight
        return hweight
