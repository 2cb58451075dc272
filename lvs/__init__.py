"""pylvs: Linux IPVS as a sans-IO Python engine.

The engine (lvs.engine.Engine) is handed IPv4 packets and the time, and answers
with the packets to send and where; everything else feeds it.
"""
__version__ = "0.1.0"
