"""Shortest expected delay: net/netfilter/ipvs/ip_vs_sed.c.

Same walk as wlc (first non-overloaded dest with weight > 0 seeds, then a
strict loh*dw > doh*lw over the non-overloaded rest), but the overhead is
activeconns + 1: inactive connections do not count, and the +1 makes an idle
heavy server beat an idle light one. Large services: the same fold kept as a
tree (_index.py).
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from . import _index
from ._base import Scheduler
from ._hashing import kernel_order


def sed_shorter(left, right):
    """right replaces left when (ra+1)/rw < (la+1)/lw, strictly."""
    if left is None:
        return right
    if right is None:
        return left
    lo, ro = left.activeconns + 1, right.activeconns + 1
    return right if lo * right.weight > ro * left.weight else left


@register_scheduler
class ShortestExpectedDelay(_index.Indexed, Scheduler):
    name = "sed"

    def make_index(self):
        return _index.DestIndex(_index.Tree(_index.usable_leaf, sed_shorter))

    def schedule(self, svc, pkt, now):
        if len(svc.destinations) > _index.SCAN_LIMIT:
            return self.sched_index().root(svc)
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
