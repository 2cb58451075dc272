"""Weighted failover: net/netfilter/ipvs/ip_vs_fo.c.

All traffic goes to the non-overloaded dest with the highest weight. The
walk (kernel list order, newest first) starts from hw = 0 and replaces the
choice only on a strictly greater weight, so a tie keeps the earlier dest
in list order and a weight-0 dest is never chosen. Connection counts play
no part. Large services: the same fold kept as a tree (_index.py).
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from . import _index
from ._base import Scheduler
from ._hashing import kernel_order


def heavier(left, right):
    """right replaces left only with a strictly higher weight."""
    if left is None:
        return right
    if right is None:
        return left
    return right if right.weight > left.weight else left


@register_scheduler
class WeightedFailover(_index.Indexed, Scheduler):
    name = "fo"

    def make_index(self):
        return _index.DestIndex(_index.Tree(_index.usable_leaf, heavier))

    def schedule(self, svc, pkt, now):
        if len(svc.destinations) > _index.SCAN_LIMIT:
            return self.sched_index().root(svc)
        hweight = None
        hw = 0
        for dest in kernel_order(svc):
            if not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight > hw:
                hweight = dest
                hw = dest.weight
        return hweight
