#!/bin/sh
# The director kernel's hop-by-hop checks (ip6_parse_tlv) on packets to an IPv6 VIP: run with
# ../shared/kernel-oracle/run-in-vm.sh this file OUT; OUT/hbh.json is tests/data/golden-v6/hbh.json.
set -e
ip netns add c; ip netns add d
ip link add c0 netns c type veth peer name d0 netns d
for ns in c d; do ip netns exec $ns sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0; done
ip netns exec d sysctl -qw net.ipv6.conf.all.forwarding=1
ip -n c link set c0 up; ip -n d link set d0 up; ip -n d link set lo up; ip -n c link set lo up
ip -n c addr add 2001:db8:1::2/64 dev c0 nodad
ip -n d addr add 2001:db8:1::1/64 dev d0 nodad
ip -n d addr add 2001:db8::200/128 dev lo
ip -n d link add dum0 type dummy; ip -n d link set dum0 up; ip -n d addr add 2001:db8:2::1/64 dev dum0 nodad
ip -n c route add 2001:db8::200 via 2001:db8:1::1
ip netns exec d ipvsadm -A -t [2001:db8::200]:80 -s rr
ip netns exec d ipvsadm -a -t [2001:db8::200]:80 -r [2001:db8:2::11]:80 -m
ip netns exec c ping -6 -c1 -W2 2001:db8::200 >/dev/null || true
cat > /tmp/p.py <<'PY'
import json, os, socket, struct, subprocess, time
from scapy.all import IPv6, TCP, IPv6ExtHdrHopByHop, Raw, send, conf
conf.verb = 0
VIP, SRC = "2001:db8::200", "2001:db8:1::2"
def crc_ccitt(crc, data):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc & 0xFFFF
def calipso():
    opt = bytearray([7, 8]) + struct.pack("!I", 1) + bytes([0, 0]) + b"\0\0"   # DOI 1, cmpt 0, sens 0, crc
    c = crc_ccitt(0xFFFF, bytes(opt[:8]) + b"\0\0") ^ 0xFFFF
    opt[8], opt[9] = c & 0xFF, c >> 8
    return bytes(opt)
CASES = [
    ("unknown-skip", bytes([0x1e, 2, 0, 0]) + bytes([1, 0])),
    ("unknown-discard", bytes([0x4e, 2, 0, 0]) + bytes([1, 0])),
    ("unknown-icmp", bytes([0x8e, 2, 0, 0]) + bytes([1, 0])),
    ("unknown-icmp-unicast", bytes([0xce, 2, 0, 0]) + bytes([1, 0])),
    ("padn-nonzero", bytes([1, 4, 0, 1, 0, 0])),
    ("pad1-eight", bytes(8) + bytes([1, 4, 0, 0, 0, 0])),
    ("pad1-seven", bytes(7) + bytes([0x1e, 5, 0, 0, 0, 0, 0])),
    ("nine-options", bytes([0x1e, 0]) * 9 + bytes([1, 2, 0, 0])),
    ("eight-options", bytes([0x1e, 0]) * 8 + bytes([1, 4, 0, 0, 0, 0])),
    ("router-alert", bytes([5, 2, 0, 0]) + bytes([1, 0])),
    ("router-alert-len3", bytes([5, 3, 0, 0, 0]) + bytes([0])),
    ("jumbo-with-payload-len", bytes([0xc2, 4]) + struct.pack("!I", 70000)),
    ("jumbo-small", bytes([0xc2, 4]) + struct.pack("!I", 1000)),
    ("jumbo-misaligned", bytes([0, 0xc2, 4]) + struct.pack("!I", 70000) + bytes([0, 0, 0, 0, 0, 0, 0])),
    ("calipso", calipso() + bytes([1, 2, 0, 0])),
    ("ioam-misaligned", bytes([0x31, 2, 0, 0]) + bytes([1, 0])),
    ("ioam-aligned", bytes([0, 0, 0x31, 2, 0, 0])),
    ("padn-seven", bytes([1, 5, 0, 0, 0, 0, 0]) + bytes([0x1e, 5, 0, 0, 0, 0, 0])),
]
rx = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
rx.settimeout(0.5)
out = []
for i, (name, opts) in enumerate(CASES):
    assert (len(opts) + 2) % 8 == 0, name
    sport = 20000 + i
    nh = bytes([6, (len(opts) + 2) // 8 - 1]) + opts
    tcp = bytes(TCP(sport=sport, dport=80, flags="S", seq=1000))
    pkt = IPv6(src=SRC, dst=VIP, nh=0) / Raw(nh + tcp)
    raw = bytearray(bytes(pkt))
    # the TCP checksum over the pseudo-header (scapy does not see through Raw)
    t = bytearray(tcp); t[16:18] = b"\0\0"
    ph = socket.inet_pton(socket.AF_INET6, SRC) + socket.inet_pton(socket.AF_INET6, VIP) + struct.pack("!IxxxB", len(t), 6)
    s = 0
    data = ph + bytes(t)
    for j in range(0, len(data), 2):
        s += (data[j] << 8) + (data[j + 1] if j + 1 < len(data) else 0)
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    ck = (~s) & 0xFFFF
    off = 40 + len(nh) + 16
    raw[off:off + 2] = struct.pack("!H", ck)
    send(IPv6(bytes(raw)), iface="c0")
    icmp = []
    t_end = time.time() + 0.6
    while time.time() < t_end:
        try:
            data, addr = rx.recvfrom(2000)
        except socket.timeout:
            break
        if data[0] in (1, 2, 3, 4):
            icmp.append({"from": addr[0], "type": data[0], "code": data[1],
                         "pointer": struct.unpack("!I", data[4:8])[0], "quoted": data[8:8 + 48].hex()})
    conns = subprocess.run(["ip", "netns", "exec", "d", "ipvsadm", "-Lnc"], capture_output=True, text=True).stdout
    out.append({"name": name, "frame": bytes(raw).hex(), "icmp": icmp,
                "connection": ":%d " % sport in conns})
json.dump(out, open(os.environ["ORACLE_OUT"] + "/hbh.json", "w"), indent=1)
PY
ip netns exec c python3 /tmp/p.py
ip netns exec d ipvsadm -Lnc >> $ORACLE_OUT/lnc.txt
grep -i -E "NETLABEL|CALIPSO" /boot/config-* > $ORACLE_OUT/config.txt 2>&1 || true
uname -r >> $ORACLE_OUT/config.txt
