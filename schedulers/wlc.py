"""Weighted least-connection: net/netfilter/ipvs/ip_vs_wlc.c.

Minimises overhead/weight, overhead = activeconns*256 + inactconns. The
first non-overloaded dest with weight > 0 seeds the choice; the rest of the
list (overloaded dests skipped) replaces it only when strictly lighter,
compared as loh*dw > doh*lw, so ties keep the earlier dest in the kernel's
list order and a weight-0 dest never wins. See _hashing.wlc_pick; large
services get the same answer from a tree (_index.py) instead of the walk.
"""

from lvs.registry import register_scheduler

from . import _index
from ._base import Scheduler
from ._hashing import wlc_pick


@register_scheduler
class WeightedLeastConnection(_index.Indexed, Scheduler):
    name = "wlc"

    def make_index(self):
        return _index.DestIndex(_index.wlc_tree())

    def schedule(self, svc, pkt, now):
        if len(svc.destinations) <= _index.SCAN_LIMIT:
            return wlc_pick(svc)
        return self.sched_index().root(svc)
