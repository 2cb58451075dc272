"""`lvs lab --ha`: the tutorial's lab on a pair of directors, and a failover.

The steps a Lab (lvs/lab.py) runs when its topology has a second director:
the twin gets the same rules, keepalived (VRRP only, lvs/ha.py's notify)
decides which one serves, and after the tutorial's requests the master is
killed during a download and a stream of requests, which the other carries
on; then the killed one comes back as backup.
"""

import hashlib
import os
import signal
import sys
import time

from .lab import (_LVSADM_RESTORE, _LVSADM_SAVE, CLIENT_IP, DOWNLOAD_PORTS, GATEWAY_IP, IFACE,
                  SYNCID, LabError, Topology, _indent)


class FailoverSteps:
    def __init__(self, lab):
        self.lab = lab

    def start(self, saved):
        """The second director gets the same rules; keepalived --vrrp in both decides who serves."""
        topo = self.lab.topo
        self.lab.say("      # (in %s) lvsadm-restore < the rules above" % topo.netns("director2"))
        r = topo.run("director2", [sys.executable, "-c", _LVSADM_RESTORE], input=saved)
        if r.returncode != 0:
            raise LabError("lvsadm-restore in director2: %s" % r.stderr.strip())
        self.lab.say("      keepalived --vrrp in both directors (VRRP only: pylvs is the load balancer):")
        self.lab.say("      priorities 150 and 100, both start BACKUP with nopreempt; the master holds the NAT")
        self.lab.say("      servers' gateway %s; `lvs vrrp-notify` makes its daemon own the VIP (gratuitous" % GATEWAY_IP)
        self.lab.say("      ARP) and the sync master, the other the sync backup (syncid %d)" % SYNCID)
        topo.start_keepalived("director", 150)
        topo.start_keepalived("director2", 100)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                topo.vrrp_state("director") == "MASTER" and topo.vrrp_state("director2") == "BACKUP"):
            time.sleep(0.1)
        if topo.vrrp_state("director") != "MASTER":
            raise LabError("keepalived: no VRRP master within 20 s (director: %s, director2: %s)"
                           % (topo.vrrp_state("director"), topo.vrrp_state("director2")))
        for role in ("director", "director2"):
            r = topo.lvsadm("-L", "--daemon", role=role)
            self.lab.say("      %s is VRRP %s: # lvsadm -L --daemon" % (role, topo.vrrp_state(role)))
            self.lab.say(_indent(r.stdout, "        ").rstrip("\n"))

    def failover(self):
        """A download and a stream of new connections through the VIP; the master killed
        in the middle (its pylvs daemon and its keepalived, SIGKILL); then it comes back."""
        topo = self.lab.topo
        failures = 0
        size = 24 << 20
        blob = os.urandom(size)
        digest = hashlib.sha256(blob).hexdigest()
        for role in topo.servers:
            with open(os.path.join(topo.workdir, "www-%s-%d" % (role, self.lab.listen_port(role)), "big.bin"), "wb") as f:
                f.write(blob)
        del blob
        self.lab.step("failover: a 24 MB download at 4 MB/s and new requests every 0.2 s, while the master dies")
        got = os.path.join(topo.workdir, "big.got")
        # From ports of its own, to tell the download from the requests in the listings.
        curl = topo.popen("client", ["curl", "-sS", "--noproxy", "*", "--max-time", "60", "--limit-rate", "4M",
                                     "--local-port", "%d-%d" % (DOWNLOAD_PORTS[0], DOWNLOAD_PORTS[-1]),
                                     "-o", got, "-w", "%{http_code} %{size_download} %{local_port}\n",
                                     "http://%s/big.bin" % topo.vip], name="download", lifetime=90)
        probes, t_kill, killed = [], None, False
        start = time.monotonic()
        while time.monotonic() - start < 10.0:
            t = time.monotonic()
            # The master dies once the other director knows the download (its first
            # sync message goes out at most 2 s after the connection's third packet).
            if not killed and t - start > 1.0 and (t - start > 5.0 or self._synced("director2")):
                self._show_download_conn()
                victims = [topo.daemon_pid("director")] + topo.keepalived_pids("director")
                for pid in victims:
                    os.kill(pid, signal.SIGKILL)
                t_kill, killed = time.time(), True
                self.lab.say("      %.1f s: kill -9 the master's lvs daemon and keepalived (pids %s)"
                             % (t - start, " ".join(map(str, victims))))
            res = topo.http_get("http://%s/" % topo.vip, timeout=1.0)
            probes.append((time.time(), res.ok))
            time.sleep(max(0.0, 0.2 - (time.monotonic() - t)))
        deadline = time.monotonic() + 60
        while curl.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        master_at = max((t for t, state in topo.vrrp_events("director2") if state == "MASTER"),
                        default=None)
        if master_at:
            self.lab.say("      director2 became VRRP master %.2f s after the kill" % (master_at - t_kill))
        lost = [t for t, ok in probes if not ok and t >= t_kill]
        after = [t for t, ok in probes if ok and t > t_kill]
        if after:
            self.lab.say("      new requests: %d of %d unanswered; answered again %.2f s after the kill"
                         % (len(lost), len(probes), after[0] - t_kill))
        else:
            failures += 1
            self.lab.say("      new requests: none answered after the kill")
        status = Topology.read_log(curl).split()
        with open(got, "rb") as f:
            ok = hashlib.sha256(f.read()).hexdigest() == digest
        self.lab.say("      the download: HTTP %s, %s bytes, sha256 %s" % (
            status[0] if status else "?", status[1] if len(status) > 1 else "?",
            "as served" if ok else "DIFFERENT"))
        if not ok:
            failures += 1
        self.lab.say("      # (in director2) lvsadm -Ln")
        self.lab.say(_indent(topo.lvsadm("-Ln", role="director2").stdout).rstrip("\n"))

        self.lab.step("the killed director comes back: lvs daemon --standby, keepalived; it stays VRRP backup")
        topo.run("director", ["ip", "addr", "del", GATEWAY_IP + "/32", "dev", IFACE])
        topo.lvs("director", "daemon", "--cleanup")
        topo.start_daemon("--standby", log_path=self.lab.daemon_log)
        rules = topo.run("director2", [sys.executable, "-c", _LVSADM_SAVE, "-n"]).stdout
        self.lab.say("      # (in director) lvsadm-restore < director2's lvsadm-save -n")
        r = topo.run("director", [sys.executable, "-c", _LVSADM_RESTORE], input=rules)
        if r.returncode != 0:
            raise LabError("lvsadm-restore in director: %s" % r.stderr.strip())
        topo.start_keepalived("director", 150)
        deadline = time.monotonic() + 15
        while topo.vrrp_state("director") != "BACKUP" and time.monotonic() < deadline:
            time.sleep(0.1)
        self.lab.say("      director is VRRP %s, director2 VRRP %s (nopreempt: no second switch)"
                     % (topo.vrrp_state("director"), topo.vrrp_state("director2")))
        for role in ("director", "director2"):
            self.lab.say("      %s: # lvsadm -L --daemon" % role)
            self.lab.say(_indent(topo.lvsadm("-L", "--daemon", role=role).stdout, "        ").rstrip("\n"))
        return failures

    def download_rows(self, role):
        """A director's -Lnc rows of the download (ESTABLISHED, from DOWNLOAD_PORTS)."""
        ports = {"%s:%d" % (CLIENT_IP, p) for p in DOWNLOAD_PORTS}
        return [line for line in self.lab.topo.lvsadm("-Lnc", role=role).stdout.splitlines()
                if "ESTABLISHED" in line and len(line.split()) > 3 and line.split()[3] in ports]

    def _synced(self, role):
        return bool(self.download_rows(role))

    def _show_download_conn(self):
        for role in ("director", "director2"):
            rows = self.download_rows(role)
            self.lab.say("      %s's -Lnc, ESTABLISHED (%s):" % (
                role, "it forwards them" if role == "director" else "synced, not forwarding"))
            self.lab.say(_indent("\n".join(rows) or "(none)", "        ").rstrip("\n"))
