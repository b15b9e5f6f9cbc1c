"""vrrpd-lab: network-namespace lab, demo and benchmark (filled in by the lab issue)."""
import sys


def main(argv=None) -> int:
    print("vrrpd-lab: not implemented yet", file=sys.stderr)
    return 1
