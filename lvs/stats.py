"""Traffic counters and the kernel's rate estimator (ip_vs_est.c, 6.1).

Every 2 seconds the estimator turns counter deltas into rates, kept scaled
(packets and connections by 2^10, bytes by 2^5) in an EWMA with weight 1/4:
    avg += (rate - avg) >> 2
It is integer arithmetic throughout, so pylvs prints the kernel's numbers.
"""

ESTIMATOR_PERIOD = 2.0


class Stats:
    """struct ip_vs_stats: running counters, the zero point set by -Z, and the estimator."""

    __slots__ = (
        "conns", "inpkts", "outpkts", "inbytes", "outbytes",
        "zero", "last", "cps", "inpps", "outpps", "inbps", "outbps",
    )

    def __init__(self):
        self.conns = self.inpkts = self.outpkts = self.inbytes = self.outbytes = 0
        self.zero = (0, 0, 0, 0, 0)
        self.last = (0, 0, 0, 0, 0)
        self.cps = self.inpps = self.outpps = self.inbps = self.outbps = 0

    def counters(self):
        return (self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)

    def shown(self):
        """ip_vs_copy_stats: counters since the last zeroing, 32-bit for conns and packets."""
        c = self.counters()
        z = self.zero
        return ((c[0] - z[0]) & 0xFFFFFFFF, (c[1] - z[1]) & 0xFFFFFFFF,
                (c[2] - z[2]) & 0xFFFFFFFF, c[3] - z[3], c[4] - z[4])

    def rates(self):
        """ip_vs_read_estimator: decoded (cps, inpps, outpps, inbps, outbps)."""
        return ((self.cps + 0x1FF) >> 10, (self.inpps + 0x1FF) >> 10,
                (self.outpps + 0x1FF) >> 10, (self.inbps + 0xF) >> 5,
                (self.outbps + 0xF) >> 5)

    def estimate(self):
        """One tick of estimation_timer for this stats block."""
        c = self.counters()
        last = self.last
        self.last = c
        self.cps += (((c[0] - last[0]) << 9) - self.cps) >> 2
        self.inpps += (((c[1] - last[1]) << 9) - self.inpps) >> 2
        self.outpps += (((c[2] - last[2]) << 9) - self.outpps) >> 2
        self.inbps += (((c[3] - last[3]) << 4) - self.inbps) >> 2
        self.outbps += (((c[4] - last[4]) << 4) - self.outbps) >> 2

    def zero_out(self):
        """ip_vs_zero_stats: the current counters become the zero point; rates restart."""
        self.zero = self.last = self.counters()
        self.cps = self.inpps = self.outpps = self.inbps = self.outbps = 0
