#!/usr/bin/env python3
"""Probe: /proc/net/ip_vs* as the real Linux 6.1 writes them, with ipvsadm's listings beside.

Dual-stack topology (oracle_lib.Topo with IPv6 turned back on): client 198.51.100.2 and
2001:db8:100::2, director VIP 203.0.113.200 and 2001:db8::200 on lo, real servers 192.0.2.11-13
and 2001:db8:2::11-13 behind the bridge (NAT topology: the real servers route back through the
director). Services of both families: TCP, UDP, fwmark (marked by nftables on the director),
persistent (with masks), one-packet scheduling, all three forwarding methods, weights and
thresholds. Then real TCP connections (closed with FIN, RST, or left open) and UDP datagrams,
and the files read in one go together with ipvsadm -Ln, -Ln --stats, -Lnc.
"""
import json
import os
import socket
import subprocess
import threading
import time

import oracle_lib as L

OUT = os.environ.get("ORACLE_OUT", "/tmp/out")
FILES = ("ip_vs", "ip_vs_stats", "ip_vs_stats_percpu", "ip_vs_conn", "ip_vs_conn_sync")
VIP6 = "2001:db8::200"
CLI6 = "2001:db8:100::2"
RS6 = ["2001:db8:2::%d" % (11 + i) for i in range(3)]

COMMANDS = [
    # IPv4
    "-A -t 203.0.113.200:80 -s rr",
    "-a -t 203.0.113.200:80 -r 192.0.2.11:80 -m -w 1",
    "-a -t 203.0.113.200:80 -r 192.0.2.12:80 -m -w 3 -x 100 -y 50",
    "-A -u 203.0.113.200:53 -s wrr",
    "-a -u 203.0.113.200:53 -r 192.0.2.11:53 -m -w 2",
    "-a -u 203.0.113.200:53 -r 192.0.2.13:53 -m -w 1",
    "-A -t 203.0.113.200:443 -s wlc -p 300 -M 255.255.255.0",
    "-a -t 203.0.113.200:443 -r 192.0.2.12:443 -g -w 1",
    "-a -t 203.0.113.200:443 -r 192.0.2.13:443 -i -w 2",
    "-A -u 203.0.113.200:514 -s rr -o",
    "-a -u 203.0.113.200:514 -r 192.0.2.13:514 -m -w 0",
    "-A -f 1 -s sh",
    "-a -f 1 -r 192.0.2.11:80 -m -w 5",
    "-A -f 2 -s rr -p 60 -o",
    "-a -f 2 -r 192.0.2.12:0 -g -w 1",
    # IPv6
    "-A -t [2001:db8::200]:80 -s wrr",
    "-a -t [2001:db8::200]:80 -r [2001:db8:2::11]:80 -m -w 2",
    "-a -t [2001:db8::200]:80 -r [2001:db8:2::12]:80 -m -w 1 -x 10 -y 5",
    "-A -u [2001:db8::200]:53 -s lc -p 120 -M 64",
    "-a -u [2001:db8::200]:53 -r [2001:db8:2::13]:53 -m -w 1",
    "-A -t [2001:db8::200]:8080 -s rr",
    "-a -t [2001:db8::200]:8080 -r [2001:db8:2::12]:8080 -i -w 1",
    "-a -t [2001:db8::200]:8080 -r [2001:db8:2::13]:8080 -g -w 4",
    "-A -f 3 -6 -s rr -p 90",
    "-a -f 3 -6 -r [2001:db8:2::11]:80 -m -w 1",
]

NFT = """
table ip mark4 {
  chain pre {
    type filter hook prerouting priority mangle; policy accept;
    ip daddr 203.0.113.200 tcp dport 8000 meta mark set 1
    ip daddr 203.0.113.200 udp dport 9000 meta mark set 2
  }
}
table ip6 mark6 {
  chain pre {
    type filter hook prerouting priority mangle; policy accept;
    ip6 daddr 2001:db8::200 tcp dport 8000 meta mark set 3
  }
}
"""


def dual_stack(t):
    """Turn IPv6 on in the topology's namespaces and give everyone an IPv6 address."""
    for ns in [t.cli, t.dir] + t.rs:
        for k in ("net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                  "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"):
            L.sh(["sysctl", "-qw", k], ns=ns, check=False)
        for ifc in ("lo", "eth0", "cl0", "br0"):
            L.sh(["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=0" % ifc], ns=ns, check=False)
            L.sh(["sysctl", "-qw", "net.ipv6.conf.%s.accept_dad=0" % ifc], ns=ns, check=False)
    L.sh(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], ns=t.dir)
    t._ipbatch(t.cli, ["addr add %s/64 dev eth0 nodad" % CLI6,
                       "route add default via 2001:db8:100::1"])
    t._ipbatch(t.dir, ["addr add 2001:db8:100::1/64 dev cl0 nodad",
                       "addr add %s/128 dev lo nodad" % VIP6,
                       "addr add 2001:db8:2::1/64 dev br0 nodad"])
    for i, rs in enumerate(t.rs):
        t._ipbatch(rs, ["addr add %s/64 dev eth0 nodad" % RS6[i],
                        "route add default via 2001:db8:2::1"])
    time.sleep(1.0)
    for a in RS6:
        L.sh(["ping", "-6", "-c", "1", "-W", "2", a], ns=t.dir, check=False)
    L.sh(["ping", "-6", "-c", "1", "-W", "2", "2001:db8:100::1"], ns=t.cli, check=False)


class Server6:
    """TCP and UDP on [::]:port (IPv6 only) in a real server's namespace; TCP sends a line."""

    def __init__(self, ns, name, port, proto):
        with L.in_netns(ns):
            kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
            self.sock = socket.socket(socket.AF_INET6, kind)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("::", port))
        if proto == "tcp":
            self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.name, self.proto, self.stop_ = name, proto, False
        self.conns = []
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while not self.stop_:
            try:
                if self.proto == "tcp":
                    c, peer = self.sock.accept()
                    c.sendall(("%s %s\n" % (self.name, peer[0])).encode())
                    self.conns.append(c)
                    threading.Thread(target=self.drain, args=(c,), daemon=True).start()
                else:
                    data, peer = self.sock.recvfrom(2048)
                    self.sock.sendto(("%s %s\n" % (self.name, peer[0])).encode(), peer)
            except socket.timeout:
                continue
            except OSError:
                break

    def drain(self, c):
        c.settimeout(None)
        try:
            while c.recv(4096):
                pass
        except OSError:
            pass
        try:
            c.close()
        except OSError:
            pass


def connect6(ns, src, sport, dst, dport, timeout=1.0):
    with L.in_netns(ns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(timeout)
    res = {"src": "[%s]:%d" % (src, sport), "dst": "[%s]:%d" % (dst, dport)}
    try:
        s.bind((src, sport))
        s.connect((dst, dport))
        res["banner"] = s.recv(256).decode().strip()
        return res, s
    except (socket.timeout, OSError) as e:
        res["error"] = str(e) or "timeout"
        s.close()
        return res, None


def udp6(ns, src, sport, dst, dport, timeout=1.0):
    with L.in_netns(ns):
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    res = {"src": "[%s]:%d" % (src, sport), "dst": "[%s]:%d" % (dst, dport)}
    try:
        s.bind((src, sport))
        s.sendto(b"hello\n", (dst, dport))
        res["answer"] = s.recvfrom(256)[0].decode().strip()
    except (socket.timeout, OSError) as e:
        res["error"] = str(e) or "timeout"
    s.close()
    return res


def close(s, how):
    if how == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def snapshot(t, label):
    """The five files, each by its own cat (about 70 ms apart under emulation), then the listings."""
    files = {}
    t0 = time.monotonic()
    for name in FILES:
        p = subprocess.run(["ip", "netns", "exec", t.dir, "cat", "/proc/net/" + name],
                           capture_output=True, text=True)
        files[name] = p.stdout
    read_s = time.monotonic() - t0
    listings = {}
    for argv in (["-Ln"], ["-Ln", "--stats"], ["-Ln", "--rate"], ["-Lnc"], ["-Ln", "--nosort"]):
        rec = t.admin(["ipvsadm"] + argv)
        listings[" ".join(argv)] = rec["stdout"]
    return {"label": label, "files": files, "read_seconds": round(read_s, 3), "ipvsadm": listings,
            "nproc": os.cpu_count()}


def main():
    result = {"kernel": L.kernel_info(),
              "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "commands": [], "traffic": [], "snapshots": [], "errors": []}
    t = L.Topo(n_rs=3, rs_mode="nat")
    try:
        t.build()
        dual_stack(t)
        p = subprocess.run(["ip", "netns", "exec", t.dir, "nft", "-f", "-"], input=NFT,
                           capture_output=True, text=True)
        if p.returncode:
            result["errors"].append("nft: " + p.stderr)
        t.start_servers(ports=(80, 443, 8000), proto="tcp")
        t.start_servers(ports=(53, 514, 9000), proto="udp")
        servers6 = []
        for i, rs in enumerate(t.rs):
            for port in (80, 8080):
                servers6.append(Server6(rs, "rs%d" % (i + 1), port, "tcp"))
            servers6.append(Server6(rs, "rs%d" % (i + 1), 53, "udp"))
        result["snapshots"].append(snapshot(t, "empty"))
        for line in COMMANDS:
            result["commands"].append(t.admin(["ipvsadm"] + line.split()))
        result["snapshots"].append(snapshot(t, "rules, no traffic"))

        c = L.Client(t.cli)
        tr = result["traffic"]
        # IPv4 TCP NAT :80 -- one left open, one closed with FIN, one with RST
        tr.append(dict(c.connect("a", "198.51.100.10:40001", "203.0.113.200:80"), id="a"))
        tr.append(dict(c.connect("b", "198.51.100.11:40002", "203.0.113.200:80"), id="b"))
        tr.append(dict(c.connect("c", "198.51.100.12:40003", "203.0.113.200:80"), id="c"))
        c.close("b", "fin")
        c.close("c", "rst")
        # IPv4 UDP NAT :53, twice from one client, once from another
        tr.append(c.udp("198.51.100.13:5001", "203.0.113.200:53"))
        tr.append(c.udp("198.51.100.13:5001", "203.0.113.200:53"))
        tr.append(c.udp("198.51.100.14:5002", "203.0.113.200:53"))
        # one-packet UDP :514 (weight 0: no server available -> dropped) and fwmark 2 (ops)
        tr.append(c.udp("198.51.100.15:5003", "203.0.113.200:514", timeout=0.5))
        tr.append(c.udp("198.51.100.15:5004", "203.0.113.200:9000", timeout=0.5))
        # IPv4 persistent DR/tunnel :443: the NAT-topology servers do not answer (SYN_RECV)
        tr.append(dict(c.connect("d", "198.51.100.16:40004", "203.0.113.200:443", timeout=1.0), id="d"))
        # fwmark 1 (sh, NAT to :80) through nftables' mark on :8000
        tr.append(dict(c.connect("e", "198.51.100.17:40005", "203.0.113.200:8000"), id="e"))
        # IPv6 TCP NAT :80: one open, one FIN
        r, s1 = connect6(t.cli, CLI6, 41001, VIP6, 80)
        tr.append(r)
        r, s2 = connect6(t.cli, CLI6, 41002, VIP6, 80)
        tr.append(r)
        if s2 is not None:
            close(s2, "fin")
        # IPv6 UDP persistent :53
        tr.append(udp6(t.cli, CLI6, 6001, VIP6, 53))
        # IPv6 tunnel/DR :8080 (no answer) and fwmark 3 (NAT to :80, persistent)
        r, s3 = connect6(t.cli, CLI6, 41003, VIP6, 8080, timeout=1.0)
        tr.append(r)
        r, s4 = connect6(t.cli, CLI6, 41004, VIP6, 8000)
        tr.append(r)
        time.sleep(2.5)  # one estimator tick (2 s) after the last packet: the totals are in
        result["snapshots"].append(snapshot(t, "after traffic"))
        result["commands"].append(t.admin(["ipvsadm", "-Z"]))
        result["snapshots"].append(snapshot(t, "after -Z"))
        for s in (s1, s3, s4):
            if s is not None:
                close(s, "rst")
        c.close_all()
    except Exception as e:  # keep what was recorded
        import traceback
        result["errors"].append(traceback.format_exc())
    finally:
        t.teardown()
    result["how"] = __doc__.strip()
    L.write_json(os.path.join(OUT, "procfs.json"), result)


if __name__ == "__main__":
    main()
