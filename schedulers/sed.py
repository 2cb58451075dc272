"""Shortest expected delay: net/netfilter/ipvs/ip_vs_sed.c.

Same walk as wlc (first non-overloaded dest with weight > 0 seeds, then a
strict loh*dw > doh*lw over the non-overloaded rest), but the overhead is
activeconns + 1: inactive connections do not count, and the +1 makes an idle
heavy server beat an idle light one.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import kernel_order


@register_scheduler
class ShortestExpectedDelay(Scheduler):
    name = "sed"

    def schedule(self, svc, pkt, now):
        it = kernel_order(svc)
        least = None
        for dest in it:
            if not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight > 0:
                least, loh = dest, dest.activeconns + 1
                break
        if least is None:
            return None
        for dest in it:
            if dest.flags & IP_VS_DEST_F_OVERLOAD:
                continue
            doh = dest.activeconns + 1
            if loh * dest.weight > doh * least.weight:
                least, loh = dest, doh
        return least
