"""The engine's timers: connection expiry (ip_vs_conn.c's ip_vs_conn_expire), reassembly
timeouts, the 2-second rate estimator (ip_vs_est.c) and the 1-second defense check
(lvs/defense.py).
A mixin of Engine (lvs/engine.py); time only moves when expire() is called.
"""

from .conntab import IP_VS_CTPL_S_ASSURED
from .defense import DEFENSE_TIMER_PERIOD
from .flags import IP_VS_CONN_F_INACTIVE, IP_VS_CONN_F_TEMPLATE
from .icmp import ICMP_TIME_EXCEEDED
from .stats import ESTIMATOR_PERIOD

ICMP_EXC_FRAGTIME = 1
ESTIMATOR_CATCH_UP = 256       # ticks after which idle rates are surely 0
TEMPLATE_EXPIRE_LATER = 60.0   # ip_vs_conn_expire: a template still in use lives on 60 s


class Timers:
    """Engine's timers (ip_vs_conn.c, ip_vs_est.c)."""

    def next_deadline(self):
        """When expire() next has work to do (connection, fragment and estimator timers)."""
        times = [t for t in (self.conntab.next_deadline(), self.defrag.next_deadline(),
                             self.defrag6.next_deadline(), self._next_estimate,
                             self._next_defense, self._trash_timer, self._nodest_flush)
                 if t is not None]
        return min(times) if times else None

    def expire(self, now):
        """Run every timer due up to `now`, in time order; return what the timers send."""
        self._advance(now)
        tab = self.conntab
        self._timer_out = sent = []
        if self.defrag.queues:
            self._expire_fragments(now)
        if self.defrag6.queues:
            self._expire_fragments6(now)
        if self._nodest_flush is not None and self._nodest_flush <= now:
            self._nodest_flush = None
            self._flush_nodest(now)
        trash = self._trash_timer
        if (self._next_estimate > now and self._next_defense > now
                and (trash is None or trash > now)):
            top = tab._heap[0][0] if tab._heap else None
            if top is None or top > now:
                return sent  # nothing due: the common case on the packet path
        while True:
            est = self._next_estimate
            trash = self._trash_timer
            defense = self._next_defense
            bound = est if est < now else now
            if defense < bound:
                bound = defense
            if trash is not None and trash < bound:
                bound = trash
            cp = tab.pop_due(bound)
            if cp is not None:
                self._conn_expire(cp, max(cp.expires, self._start))
                continue
            if trash is not None and trash <= now and trash <= est and trash <= defense:
                self._trash_expire(trash)
                continue
            if defense <= now and defense <= est:
                self._defense_timer(defense)
                after = defense + DEFENSE_TIMER_PERIOD
                if not self.dropentry:
                    # Until an entry expires or a packet comes, nothing moves the
                    # levels: the ticks up to then repeat this one; run only the last.
                    top = tab.next_deadline()
                    until = now if top is None or top > now else top
                    if until >= after + DEFENSE_TIMER_PERIOD:
                        after += (until - after) // DEFENSE_TIMER_PERIOD * DEFENSE_TIMER_PERIOD
                self._next_defense = after
                continue
            if est <= now:
                self._estimate()
                self._next_estimate = est + ESTIMATOR_PERIOD
                due = int((now - est) // ESTIMATOR_PERIOD)
                if due > ESTIMATOR_CATCH_UP:
                    # A long quiet gap: no packet comes between these ticks, so
                    # after the first they only decay the averages, which reach
                    # zero well within ESTIMATOR_CATCH_UP ticks; skip the rest.
                    for _ in range(ESTIMATOR_CATCH_UP):
                        self._estimate()
                    self._next_estimate = est + (due + 1) * ESTIMATOR_PERIOD
                # Housekeeping on the estimator's beat: scheduler timers
                # (lblc/lblcr catch up on their own when they schedule) and
                # the trash of deleted real servers.
                beat = self._next_estimate - ESTIMATOR_PERIOD
                for svc in self.services.values():
                    if svc.scheduler is not None:
                        svc.scheduler.tick(beat)
                continue
            break
        return sent

    def _expire_fragments(self, now):
        """ip_expire: an incomplete datagram to one of our addresses earns its
        sender a time exceeded (fragment reassembly) once its first part came."""
        for _, head in self.defrag.expire(now):
            self.count_drop("fragment_timeout")
            if head is not None and self.is_local(head[16:20]):
                saved, self._out = self._out, self._timer_out
                self.send_icmp_error(bytearray(head), ICMP_TIME_EXCEEDED, ICMP_EXC_FRAGTIME, 0)
                self._out = saved

    def _expire_fragments6(self, now):
        """ip6frag_expire_frag_queue: once the first fragment came, its sender hears
        time exceeded (fragment reassembly), for any destination (lvs/defrag6.py)."""
        for _, head in self.defrag6.expire(now):
            self.count_drop("fragment_timeout")
            if head is not None:
                dst = bytes(head[24:40])
                saved, self._out = self._out, self._timer_out
                self.send_icmp_error(bytearray(head), ICMP_TIME_EXCEEDED, ICMP_EXC_FRAGTIME, 0,
                                     None if self.is_local(dst) else self.own_address(dst))
                self._out = saved

    def _estimate(self):
        if not self.config.run_estimation:
            return
        self.tot_stats.estimate()
        for svc in self.services.values():
            svc.stats.estimate()
            for dest in svc.destinations:
                dest.stats.estimate()

    def _conn_expire(self, cp, now):
        """ip_vs_conn_expire."""
        if cp.n_control:
            # A template that still controls connections is kept 60 s more.
            cp.timeout = TEMPLATE_EXPIRE_LATER
            if self.sync_master is not None:
                self.sync_conn(cp, self.config.sync_threshold[0])
            self.conntab.refresh(cp, now)
            return
        self.conntab.remove(cp)
        if self.sync_seq:
            self.sync_seq.pop(cp, None)
        ct = cp.control
        if ct is not None:
            has_ref = cp.timeout == 0
            ct.n_control -= 1
            cp.control = None
            if has_ref and not ct.n_control and (
                    not ct.flags & IP_VS_CONN_F_TEMPLATE or not ct.state & IP_VS_CTPL_S_ASSURED):
                self.conntab.expire_now(ct, now)
        dest = cp.dest
        if dest is not None:
            dest.unbind(bool(cp.flags & IP_VS_CONN_F_TEMPLATE), bool(cp.flags & IP_VS_CONN_F_INACTIVE))
