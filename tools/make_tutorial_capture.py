#!/usr/bin/env python3
"""Build examples/tutorial.pcap and examples/tutorial.rules, the `lvs replay` demo.

The scenario is the LVS tutorial's director: one virtual service,
198.51.100.2:80, round robin, with one real server per forwarding method:

    198.51.100.10  direct routing (-g)   answers the client itself
    198.51.100.11  IPIP tunnel    (-i)   answers the client itself
    198.51.100.12  NAT            (-m)   answers through the director

tutorial.rules is that configuration in ipvsadm-save format, typed as in the
tutorial (real-server ports 10 and 11 mean nothing for -g/-i: the kernel
rewrites them to 80). tutorial.pcap is what `tcpdump -Q in` on the director
(MAC 02:00:00:00:00:01) records, every sender using MAC 02:00 + its IPv4
address bytes, starting at 1700000000.0:

  * 0.0 s   an ARP who-has 198.51.100.2 from the client (not for IPVS);
  * 0.5 s onwards, every 0.5 s: six HTTP/1.0 connections from
    198.51.100.1:40001..40006 to the VIP. IPVS puts each new real server at
    the head of its list, so rr picks .12 (NAT), .11, .10, .12, .11, .10.
    Each exchange is SYN, SYN-ACK, ACK, GET, ACK, response, ACK, server FIN,
    client FIN, last ACK, 1 ms apart. For the two NAT connections the
    director sees both sides (the server's replies come from 198.51.100.12:12
    to the client); for direct routing and tunnelling it sees only the
    client's five packets, whose ACKs still acknowledge the unseen replies;
  * 3.5 s   a TCP SYN to 198.51.100.2:22 and, at 4.0 s, a UDP DNS query to
    198.51.100.2:53: no virtual service, so the director keeps them.

Run `python3 tools/make_tutorial_capture.py [--out DIR]`; the output is the
same bytes every time (fixed times, sequence numbers and IP IDs).
"""

import argparse
import os
import struct
import sys

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lvs.pcap import PcapWriter, default_mac, ether_frame, parse_mac  # noqa: E402

CLIENT = "198.51.100.1"
VIP = "198.51.100.2"
DIRECTOR_MAC = parse_mac("02:00:00:00:00:01")
START_US = 1700000000 * 1000000  # whole microseconds: exact timestamps

RULES = """\
# The tutorial's director: one TCP service, round robin, one real server per forwarding method.
-A -t 198.51.100.2:80 -s rr
-a -t 198.51.100.2:80 -r 198.51.100.10:10 -g -w 1
-a -t 198.51.100.2:80 -r 198.51.100.11:11 -i -w 1
-a -t 198.51.100.2:80 -r 198.51.100.12:12 -m -w 1
"""

# (client port, real server, its port, forwarding method) in rr order.
CONNECTIONS = [
    (40001, "198.51.100.12", 12, "nat"),
    (40002, "198.51.100.11", 11, "tunnel"),
    (40003, "198.51.100.10", 10, "dr"),
    (40004, "198.51.100.12", 12, "nat"),
    (40005, "198.51.100.11", 11, "tunnel"),
    (40006, "198.51.100.10", 10, "dr"),
]

REQUEST = b"GET / HTTP/1.0\r\nHost: 198.51.100.2\r\n\r\n"
# Linux without TCP timestamps: MSS, SACK permitted, window scale.
SYN_OPTIONS = [("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b""),
               ("NOP", None), ("WScale", 7)]


def response(last_octet):
    return b"HTTP/1.0 200 OK\r\n\r\n" + str(last_octet).encode() + b"\n"


def ip_addr_bytes(text):
    return bytes(int(part) for part in text.split("."))


def frame(src_ip, ip_packet):
    """Pad to the Ethernet minimum, as the wire (and so tcpdump) shows it."""
    data = ether_frame(DIRECTOR_MAC, default_mac(ip_addr_bytes(src_ip)), bytes(ip_packet))
    return data + b"\x00" * max(0, 60 - len(data))


def tcp_exchange(n, cport, server, sport, method):
    """(microseconds, frame) for one HTTP connection as the director sees it."""
    c_isn = 1000000000 + n * 1000000  # fixed ISNs keep the output stable
    s_isn = 3000000000 + n * 1000000
    reply = response(int(server.rsplit(".", 1)[1]))
    req_len, rep_len = len(REQUEST), len(reply)
    # The real server talks from its own address and port (NAT reverses it).
    client_ip = dict(src=CLIENT, dst=VIP, ttl=64, flags="DF")
    server_ip = dict(src=server, dst=CLIENT, ttl=64, flags="DF")
    c_tcp = dict(sport=cport, dport=80)
    s_tcp = dict(sport=sport, dport=cport)
    steps = [  # (from client?, flags, seq, ack, window, payload)
        (True, "S", c_isn, 0, 64240, b""),
        (False, "SA", s_isn, c_isn + 1, 65160, b""),
        (True, "A", c_isn + 1, s_isn + 1, 502, b""),
        (True, "PA", c_isn + 1, s_isn + 1, 502, REQUEST),
        (False, "A", s_isn + 1, c_isn + 1 + req_len, 509, b""),
        (False, "PA", s_isn + 1, c_isn + 1 + req_len, 509, reply),
        (True, "A", c_isn + 1 + req_len, s_isn + 1 + rep_len, 502, b""),
        (False, "FA", s_isn + 1 + rep_len, c_isn + 1 + req_len, 509, b""),
        (True, "FA", c_isn + 1 + req_len, s_isn + 2 + rep_len, 502, b""),
        (False, "A", s_isn + 2 + rep_len, c_isn + 2 + req_len, 509, b""),
    ]
    start = START_US + n * 500000
    client_id = 0x4000 + n * 0x111  # per-socket IP ID counters, as Linux keeps
    server_id = 0x6000 + n * 0x111
    out = []
    for step, (from_client, flags, seq, ack, window, payload) in enumerate(steps):
        if not from_client and method != "nat":
            continue  # DR/tunnel replies go straight to the client
        options = SYN_OPTIONS if "S" in flags else []
        if from_client:
            pkt = IP(id=client_id, **client_ip) / TCP(
                seq=seq, ack=ack, flags=flags, window=window, options=options, **c_tcp)
            client_id += 1
            src = CLIENT
        else:
            # Linux sends its SYN-ACK with IP ID 0, then counts from the socket's ID.
            pkt_id = 0 if flags == "SA" else server_id
            pkt = IP(id=pkt_id, **server_ip) / TCP(
                seq=seq, ack=ack, flags=flags, window=window, options=options, **s_tcp)
            if flags != "SA":
                server_id += 1
            src = server
        if payload:
            pkt = pkt / payload
        out.append((start + step * 1000, frame(src, pkt)))
    return out


def dns_query():
    """A plain DNS query for example.com, A record, built by hand to stay stable."""
    header = struct.pack("!HHHHHH", 0x1D2C, 0x0100, 1, 0, 0, 0)
    qname = b"\x07example\x03com\x00"
    return header + qname + struct.pack("!HH", 1, 1)


def packets():
    out = []
    arp = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:c6:33:64:01") / ARP(
        op=1, hwsrc="02:00:c6:33:64:01", psrc=CLIENT, hwdst="00:00:00:00:00:00", pdst=VIP)
    raw_arp = bytes(arp)
    out.append((START_US, raw_arp + b"\x00" * (60 - len(raw_arp))))
    for n, (cport, server, sport, method) in enumerate(CONNECTIONS, 1):
        out.extend(tcp_exchange(n, cport, server, sport, method))
    ssh = IP(src=CLIENT, dst=VIP, id=0x5123, ttl=64, flags="DF") / TCP(
        sport=40100, dport=22, seq=2000000000, flags="S", window=64240, options=SYN_OPTIONS)
    out.append((START_US + 3500000, frame(CLIENT, ssh)))
    dns = IP(src=CLIENT, dst=VIP, id=0x5234, ttl=64, flags="DF") / UDP(
        sport=40200, dport=53) / dns_query()
    out.append((START_US + 4000000, frame(CLIENT, dns)))
    out.sort(key=lambda item: item[0])  # stable: equal times never happen anyway
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")
    parser.add_argument("--out", default=default_out,
                        help="directory for tutorial.pcap and tutorial.rules (default: examples/)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    with PcapWriter(os.path.join(args.out, "tutorial.pcap")) as writer:
        for micros, data in packets():
            sec, usec = divmod(micros, 1000000)
            writer.write(sec + usec / 1000000, data)
    with open(os.path.join(args.out, "tutorial.rules"), "w", newline="\n") as f:
        f.write(RULES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
