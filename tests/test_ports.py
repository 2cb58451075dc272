"""The packet ports on real interfaces: AF_PACKET with and without the ring, and TUN."""

import ctypes
import os
import select
import socket
import subprocess
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from lvs.ports import RawPort, TunPort

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces, AF_PACKET, TUN")
CLONE_NEWNET = 0x40000000


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def in_netns():
    """Run the test inside a fresh namespace 'b' with a veth to namespace 'a'; restore after."""
    a, b = "lvsport-%d-a" % os.getpid(), "lvsport-%d-b" % os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "-n", a, "link", "add", "pa", "type", "veth", "peer", "name", "pb", "netns", b)
        sh("ip", "-n", a, "addr", "add", "192.0.2.1/24", "dev", "pa")
        sh("ip", "-n", a, "link", "set", "pa", "up")
        sh("ip", "-n", b, "link", "set", "pb", "up")
        fd = os.open("/run/netns/" + b, os.O_RDONLY)
        assert libc.setns(fd, CLONE_NEWNET) == 0
        os.close(fd)
        yield a
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        for n in (a, b):
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)


def udp_from_a(netns, count):
    code = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
            "for i in range(%d): s.sendto(b'x%%d' %% i, ('192.0.2.255', 9))\n" % count)
    subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", code], check=True, timeout=30)


@pytest.mark.parametrize("ring", [True, False])
def test_raw_port_receives_and_sends_frames(in_netns, ring):
    port = RawPort("pb", ring=ring)
    try:
        assert port.ring_mode == ("tpacket_v2" if ring else "recvfrom")
        udp_from_a(in_netns, 5)
        got, deadline = [], time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            select.select([port], [], [], 0.5)
            got += [f for f in port.recv_batch(64) if Ether(f).haslayer(UDP)]
        assert [bytes(Ether(f)[UDP].payload) for f in got] == [b"x%d" % i for i in range(5)]
        frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=port.mac) / IP(src="192.0.2.2", dst="192.0.2.1") /
                      UDP(sport=1, dport=9) / b"out")
        assert port.send(frame) and port.counters["tx"] == 1
        # Our own transmissions are not read back.
        time.sleep(0.1)
        assert not [f for f in port.recv_batch(64) if f == frame]
    finally:
        port.close()


def test_tun_port_hands_packets_to_the_stack_and_reads_what_is_routed_to_it(in_netns):
    tun = TunPort("lvsptun0")
    try:
        sh("ip", "addr", "add", "203.0.113.1/24", "dev", "lvsptun0")
        sh("ip", "link", "set", "lvsptun0", "up")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("203.0.113.1", 5000))
        s.settimeout(3)
        # In: a packet written to the device arrives at the local socket.
        assert tun.send(bytes(IP(src="203.0.113.9", dst="203.0.113.1") / UDP(sport=7, dport=5000) / b"in"))
        data, peer = s.recvfrom(100)
        assert data == b"in" and peer == ("203.0.113.9", 7)
        # Out: what the host routes to the device is read from it.
        s.sendto(b"back", ("203.0.113.9", 7))
        got, deadline = [], time.monotonic() + 3
        while not got and time.monotonic() < deadline:
            select.select([tun], [], [], 0.5)
            got = [p for p in tun.recv_batch(64) if p[0] >> 4 == 4 and IP(p).haslayer(UDP)]
        assert bytes(IP(got[0])[UDP].payload) == b"back"
        s.close()
    finally:
        tun.close()
    # The device lives as long as its descriptor.
    assert "lvsptun0" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


def test_raw_port_that_lost_step_with_the_kernels_ring_finds_the_waiting_frames(in_netns):
    """Our slot ahead of the kernel's head: the frames wait behind us and every wakeup
    reads nothing. After RESYNC_AFTER such wakeups the port goes to the oldest one."""
    from lvs.ports import raw
    port = RawPort("pb", ring=True)
    try:
        port.slot = 10                        # the kernel writes from frame 0
        udp_from_a(in_netns, 3)
        time.sleep(0.2)
        for _ in range(raw.RESYNC_AFTER - 1):
            assert port.recv_batch(64) == []
        assert port.counters["rx_ring_resyncs"] == 0
        port.recv_batch(64)
        assert port.counters["rx_ring_resyncs"] == 1 and port.slot < 10
        got = [f for f in port.recv_batch(64) if Ether(f).haslayer(UDP)]
        assert [bytes(Ether(f)[UDP].payload) for f in got] == [b"x0", b"x1", b"x2"]
    finally:
        port.close()
