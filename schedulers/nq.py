"""Never queue: net/netfilter/ipvs/ip_vs_nq.c.

Skips overloaded and weight-0 dests. The first dest (kernel list order) with
no active connection is returned at once, whatever its weight or inactive
count; otherwise the choice is sed's: least (activeconns + 1)/weight, strict
comparison loh*dw > doh*lw, ties to the earlier dest.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import kernel_order


@register_scheduler
class NeverQueue(Scheduler):
    name = "nq"

    def schedule(self, svc, pkt, now):
        least = None
        loh = 0
        for dest in kernel_order(svc):
            if dest.flags & IP_VS_DEST_F_OVERLOAD or not dest.weight:
                continue
            if dest.activeconns == 0:
                return dest  # idle: no queue at all
            doh = dest.activeconns + 1
            if least is None or loh * dest.weight > doh * least.weight:
                least, loh = dest, doh
        return least
