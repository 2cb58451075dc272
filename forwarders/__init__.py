"""Forwarding methods, one module each (ip_vs_xmit.c).

Each exposes `xmit(engine, cp, buf, ihl)`: buf is a bytearray holding the
IPv4 packet from the client, already checked by the engine; the function
hands what it builds to engine.output (which fragments it where the kernel's
ip_finish_output would) and returns True, or returns None after counting a
drop (and possibly sending an ICMP error) through the engine. The method is bound to a
connection once, when it is created (ip_vs_bind_xmit).
"""
