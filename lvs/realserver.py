"""`lvs realserver`: prepare this host (or namespace) to be a real server. (being written)"""


def add_subparser(sub):
    sub.add_parser("realserver", help="prepare this host to be a real server (DR, tunnel, NAT)")
