"""Forwarding methods, one module each (ip_vs_xmit.c).

Each exposes `xmit(engine, cp, buf, ihl)`: buf is a bytearray holding the
IPv4 packet from the client, already checked by the engine; the function
returns the Transmit to send, or None after counting a drop (and possibly
queuing an ICMP error) through the engine. The method is bound to a
connection once, when it is created (ip_vs_bind_xmit).
"""
