"""The scheduler contract (struct ip_vs_scheduler).

One instance serves one service (init_service + svc->sched_data). The engine
calls the hooks as ip_vs_ctl.c does:
    add_dest(svc, dest)   after a dest is inserted at the head of svc.destinations
    del_dest(svc, dest)   after a dest is removed from svc.destinations
    upd_dest(svc, dest)   after an edit changed a dest's weight or settings
    schedule(svc, pkt, now) -> Dest or None
    tick(now)             periodic work driven by the engine's clock (lblc/lblcr gc)
`pkt` has saddr, daddr (4 raw bytes), sport, dport and protocol. Schedulers
never read a clock or draw randomness of their own.
"""

from lvs.flags import IP_VS_DEST_F_OVERLOAD


class Scheduler:
    name = ""

    def __init__(self, svc, config=None):
        self.config = config

    def add_dest(self, svc, dest):
        pass

    def del_dest(self, svc, dest):
        pass

    def upd_dest(self, svc, dest):
        pass

    def done_service(self, svc):
        pass

    def tick(self, now):
        pass

    def schedule(self, svc, pkt, now):
        raise NotImplementedError


def usable(dest):
    """Neither overloaded nor quiescent: what most kernel schedulers test."""
    return not dest.flags & IP_VS_DEST_F_OVERLOAD and dest.weight > 0
