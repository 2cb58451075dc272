"""Traffic counters and the kernel's rate estimator (ip_vs_est.c, 6.1).

Packets bump per-CPU counters; every 2 seconds the estimation timer sums
them into `kstats` and turns the deltas into rates, kept scaled (packets and
connections by 2^10, bytes by 2^5) in an EWMA with weight 1/4:
    avg += (rate - avg) >> 2
Listings read `kstats`, not the live counters, so in 6.1 what ipvsadm shows
lags the traffic by up to 2 s, and with run_estimation=0 it never moves.
It is integer arithmetic throughout, so pylvs prints the kernel's numbers.
"""

ESTIMATOR_PERIOD = 2.0
_ZEROS = (0, 0, 0, 0, 0)


class Stats:
    """struct ip_vs_stats: live counters, the timer's snapshot, the -Z zero point, the rates."""

    __slots__ = (
        "conns", "inpkts", "outpkts", "inbytes", "outbytes",
        "kstats", "zero", "last", "cps", "inpps", "outpps", "inbps", "outbps",
    )

    def __init__(self):
        self.conns = self.inpkts = self.outpkts = self.inbytes = self.outbytes = 0
        self.kstats = self.zero = self.last = _ZEROS
        self.cps = self.inpps = self.outpps = self.inbps = self.outbps = 0

    def counters(self):
        """The live counters (the per-CPU sums the next tick will read)."""
        return (self.conns, self.inpkts, self.outpkts, self.inbytes, self.outbytes)

    def shown(self):
        """ip_vs_copy_stats: (conns, inpkts, outpkts, inbytes, outbytes) as of the last
        estimator tick, since the last zeroing."""
        k, z = self.kstats, self.zero
        return (k[0] - z[0], k[1] - z[1], k[2] - z[2], k[3] - z[3], k[4] - z[4])

    def rates(self):
        """ip_vs_read_estimator: decoded (cps, inpps, outpps, inbps, outbps)."""
        return ((self.cps + 0x1FF) >> 10, (self.inpps + 0x1FF) >> 10,
                (self.outpps + 0x1FF) >> 10, (self.inbps + 0xF) >> 5,
                (self.outbps + 0xF) >> 5)

    def estimate(self):
        """One tick of estimation_timer for this stats block."""
        self.kstats = c = self.counters()
        last = self.last
        self.last = c
        self.cps += (((c[0] - last[0]) << 9) - self.cps) >> 2
        self.inpps += (((c[1] - last[1]) << 9) - self.inpps) >> 2
        self.outpps += (((c[2] - last[2]) << 9) - self.outpps) >> 2
        self.inbps += (((c[3] - last[3]) << 4) - self.inbps) >> 2
        self.outbps += (((c[4] - last[4]) << 4) - self.outbps) >> 2

    def zero_out(self):
        """ip_vs_zero_stats: the last snapshot becomes the zero point; rates restart."""
        self.zero = self.last = self.kstats
        self.cps = self.inpps = self.outpps = self.inbps = self.outbps = 0
