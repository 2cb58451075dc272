"""Weighted round-robin: net/netfilter/ipvs/ip_vs_wrr.c.

State (struct ip_vs_wrr_mark): cl = last dest picked or the list head,
cw = current weight, mw = max weight - (gcd - 1), di = gcd of the positive
weights. A pick continues after cl and takes the first non-overloaded dest
with weight >= cw; each time the walk passes the head, cw drops by di, and
when cw reaches 0 it restarts at mw. So a dest of weight w is served w/gcd
times per cycle of sum(w)/gcd picks. Every add/del/upd (ip_vs_wrr_dest_changed)
moves cl to the head and recomputes di/mw, keeping cw unless it is now above
mw or zero (cw is not reset to mw otherwise: the kernel's sequence after
adding dests starts at cw = 1, as the recorded UDP wrr golden shows).
"""

from math import gcd

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import kernel_order


@register_scheduler
class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self, svc, config=None):
        super().__init__(svc, config)
        self._recompute(svc)
        self.cw = self.mw  # ip_vs_wrr_init_svc

    def _recompute(self, svc):
        self._ring = list(kernel_order(svc))
        self.cl = -1  # list head
        g = 0
        for dest in self._ring:  # ip_vs_wrr_gcd_weight
            if dest.weight > 0:
                g = gcd(dest.weight, g) if g > 0 else dest.weight
        self.di = g or 1
        self.mw = max([0] + [d.weight for d in self._ring]) - (self.di - 1)

    def _dest_changed(self, svc, dest):
        self._recompute(svc)
        if self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    add_dest = del_dest = upd_dest = _dest_changed

    def schedule(self, svc, pkt, now):
        if self.mw == 0:
            return None
        ring = self._ring
        n = len(ring)
        pos = last = self.cl
        stop = None
        last_pass = restarted = False
        while True:
            for i in range(pos + 1, n):
                dest = ring[i]
                if not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight >= self.cw:
                    self.cl = i
                    return dest
                if i == stop:
                    self.cl = i
                    return None
            pos = -1  # walked back to the head
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                # A last pass (weight >= 1) already covered every dest.
                if last_pass or last == -1:
                    self.cl = -1
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last  # finish the w >= 1 pass on the dests up to `last`
