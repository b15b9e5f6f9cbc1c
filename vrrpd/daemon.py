"""vrrpd: the daemon's command line (filled in by the engine issue)."""
from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vrrpd", description="VRRP daemon reading keepalived.conf")
    p.add_argument("-v", "--version", action="version", version=f"vrrpd {__version__}")
    p.add_argument("-f", "--use-file", dest="config", default="/etc/vrrpd/vrrpd.conf",
                   help="configuration file (keepalived.conf syntax)")
    p.add_argument("-t", "--config-test", action="store_true",
                   help="check the configuration and exit 0 if valid, 1 if not")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config_test:
        return config_test(args.config)
    print("vrrpd: not implemented yet", file=sys.stderr)
    return 1


def config_test(path: str) -> int:
    """`vrrpd -t`: print every problem as FILE:LINE: message; 0 if valid."""
    from .config import load

    result = load(path)
    for w in result.warnings:
        print(f"{w}", file=sys.stderr)
    for e in result.errors:
        print(f"{e}", file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
