"""vrrpctl: control and status client (filled in by the operations issue)."""
import sys


def main(argv=None) -> int:
    print("vrrpctl: not implemented yet", file=sys.stderr)
    return 1
