"""Round-robin: net/netfilter/ipvs/ip_vs_rr.c.

The kernel keeps a cursor (svc->sched_data) on the last dest picked, or on
the list head. A pick walks from the entry after the cursor, wraps once, and
takes the first dest that is not overloaded and has weight > 0; the cursor
dest itself is the last one tried. When the cursor dest is deleted,
ip_vs_rr_del_dest moves the cursor to its predecessor (or the head), so the
walk resumes with the deleted dest's successor.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD
from lvs.registry import register_scheduler

from ._base import Scheduler
from ._hashing import kernel_order


@register_scheduler
class RoundRobin(Scheduler):
    name = "rr"

    def __init__(self, svc, config=None):
        super().__init__(svc, config)
        self._ring = list(kernel_order(svc))  # the kernel's list, newest first
        self._cur = -1                        # index of the cursor; -1 = list head

    def _resync(self, svc, cursor_dest):
        self._ring = list(kernel_order(svc))
        self._cur = self._ring.index(cursor_dest) if cursor_dest is not None else -1

    def _cursor_dest(self):
        return self._ring[self._cur] if self._cur >= 0 else None

    def add_dest(self, svc, dest):
        self._resync(svc, self._cursor_dest())

    def upd_dest(self, svc, dest):
        self._resync(svc, self._cursor_dest())

    def del_dest(self, svc, dest):
        cur = self._cursor_dest()
        if cur is dest:
            # sched_data = p->next->prev: the deleted entry's predecessor.
            cur = self._ring[self._cur - 1] if self._cur > 0 else None
        self._resync(svc, cur)

    def schedule(self, svc, pkt, now):
        ring = self._ring
        n = len(ring)
        start = self._cur + 1
        # From the head: one pass. From a dest: wrap, ending on that dest.
        for k in range(n):
            i = (start + k) % n
            dest = ring[i]
            if not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight > 0:
                self._cur = i
                return dest
        return None
