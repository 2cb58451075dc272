"""Weighted overflow: net/netfilter/ipvs/ip_vs_ovf.c.

The highest-weight dest takes connections while its activeconns do not
exceed its weight (activeconns == weight is still accepted: the test is
activeconns > weight), then traffic overflows to the next highest.
Skipped: overloaded dests, weight 0, activeconns > weight. Among the rest
the first in kernel list order (newest first) wins a tie (w > hw is
strict). Inactive connections do not count.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import kernel_order


@register_scheduler
class WeightedOverflow(Scheduler):
    name = "ovf"

    def schedule(self, svc, pkt, now):
        h = None
        hw = 0
        for dest in kernel_order(svc):
            w = dest.weight
            if dest.flags & IP_VS_DEST_F_OVERLOAD or dest.activeconns > w or w == 0:
                continue
            if h is None or w > hw:
                h = dest
                hw = w
        return h
