"""`lvs lab`: the tutorial's topology in network namespaces. (being written)"""


def add_subparser(sub):
    sub.add_parser("lab", help="run the tutorial in network namespaces (root)")
