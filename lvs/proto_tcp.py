"""TCP connection tracking as IPVS does it (ip_vs_proto_tcp.c, Linux 6.1).

The transition grids are the kernel's, as data: three directions (INPUT,
OUTPUT, INPUT_ONLY for DR/TUN where replies bypass the director), four events
picked from the TCP flags with priority rst > syn > fin > ack, one column per
current state. `secure_tcp` swaps in the stricter TCP_STATES_DOS grid.
"""

import struct

from .checksum import l4_checksum

(NONE, ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT, TIME_WAIT, CLOSE,
 CLOSE_WAIT, LAST_ACK, LISTEN, SYNACK) = range(11)

STATE_NAMES = ("NONE", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT",
               "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "SYNACK")

# tcp_timeouts[], seconds
TIMEOUTS = (2, 15 * 60, 2 * 60, 60, 2 * 60, 2 * 60, 10, 60, 30, 2 * 60, 120)

# tcp_state_active_table: which states count in the dest's activeconns.
ACTIVE = (False, True, True, True, False, False, False, False, False, False, True)

DIR_INPUT, DIR_OUTPUT, DIR_INPUT_ONLY = 0, 4, 8

_no, _es, _ss, _sr, _fw, _tw, _cl, _cw, _la, _li, _sa = range(11)

TCP_STATES = (
    # INPUT      sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
    (_sr, _es, _es, _sr, _sr, _sr, _sr, _sr, _sr, _sr, _sr),  # syn
    (_cl, _cw, _ss, _tw, _tw, _tw, _cl, _cw, _la, _li, _tw),  # fin
    (_es, _es, _ss, _es, _fw, _tw, _cl, _cw, _cl, _li, _es),  # ack
    (_cl, _cl, _cl, _sr, _cl, _cl, _cl, _cl, _la, _li, _sr),  # rst
    # OUTPUT
    (_ss, _es, _ss, _sr, _ss, _ss, _ss, _ss, _ss, _li, _sr),  # syn
    (_tw, _fw, _ss, _tw, _fw, _tw, _cl, _tw, _la, _li, _tw),  # fin
    (_es, _es, _ss, _es, _fw, _tw, _cl, _cw, _la, _es, _es),  # ack
    (_cl, _cl, _ss, _cl, _cl, _tw, _cl, _cl, _cl, _cl, _cl),  # rst
    # INPUT_ONLY
    (_sr, _es, _es, _sr, _sr, _sr, _sr, _sr, _sr, _sr, _sr),  # syn
    (_cl, _fw, _ss, _tw, _fw, _tw, _cl, _cw, _la, _li, _tw),  # fin
    (_es, _es, _ss, _es, _fw, _tw, _cl, _cw, _cl, _li, _es),  # ack
    (_cl, _cl, _cl, _sr, _cl, _cl, _cl, _cl, _la, _li, _cl),  # rst
)

TCP_STATES_DOS = (
    # INPUT
    (_sr, _es, _es, _sr, _sr, _sr, _sr, _sr, _sr, _sr, _sa),  # syn
    (_cl, _cw, _ss, _tw, _tw, _tw, _cl, _cw, _la, _li, _sa),  # fin
    (_es, _es, _ss, _sr, _fw, _tw, _cl, _cw, _cl, _li, _sa),  # ack
    (_cl, _cl, _cl, _sr, _cl, _cl, _cl, _cl, _la, _li, _cl),  # rst
    # OUTPUT
    (_ss, _es, _ss, _sa, _ss, _ss, _ss, _ss, _ss, _li, _sa),  # syn
    (_tw, _fw, _ss, _tw, _fw, _tw, _cl, _tw, _la, _li, _tw),  # fin
    (_es, _es, _ss, _es, _fw, _tw, _cl, _cw, _la, _es, _es),  # ack
    (_cl, _cl, _ss, _cl, _cl, _tw, _cl, _cl, _cl, _cl, _cl),  # rst
    # INPUT_ONLY
    (_sa, _es, _es, _sr, _sa, _sa, _sa, _sa, _sa, _sa, _sa),  # syn
    (_cl, _fw, _ss, _tw, _fw, _tw, _cl, _cw, _la, _li, _tw),  # fin
    (_es, _es, _ss, _es, _fw, _tw, _cl, _cw, _cl, _li, _es),  # ack
    (_cl, _cl, _cl, _sr, _cl, _cl, _cl, _cl, _la, _li, _cl),  # rst
)

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def event_index(tcp_flags):
    """tcp_state_idx: rst, then syn, then fin, then ack; -1 for none of them."""
    if tcp_flags & RST:
        return 3
    if tcp_flags & SYN:
        return 0
    if tcp_flags & FIN:
        return 1
    if tcp_flags & ACK:
        return 2
    return -1


def next_state(table, direction, tcp_flags, state):
    """The state after a packet; a packet with none of the four flags means CLOSE."""
    idx = event_index(tcp_flags)
    if idx < 0:
        return CLOSE
    return table[direction + idx][state]


def reset_segment(packet, th, end, saddr, daddr):
    """The RST a closed port answers a segment at `th` (ending at `end`) with, from
    `saddr` to `daddr`, as tcp_v4_send_reset and tcp_v6_send_reset build it: to an
    ACK, with its ack number as our sequence; otherwise acknowledging what the
    segment held (SYN and FIN count one each). Checksummed over the pseudo-header."""
    sport, dport, seq, ack = struct.unpack_from("!HHII", packet, th)
    flags = packet[th + 13]
    if flags & ACK:
        rseq, rack, rflags = ack, 0, RST
    else:
        doff = (packet[th + 12] >> 4) << 2
        length = end - th - doff + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        rseq, rack, rflags = 0, (seq + length) & 0xFFFFFFFF, RST | ACK
    tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, rseq, rack, 0x50, rflags, 0, 0, 0))
    struct.pack_into("!H", tcp, 16, l4_checksum(saddr, daddr, 6, bytes(tcp)))
    return bytes(tcp)
