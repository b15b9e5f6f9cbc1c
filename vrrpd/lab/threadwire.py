"""Run in the switch namespace (`python -m vrrpd.lab.threadwire PORT...`): GRO (plus
UDP GRO forwarding, which makes a veth take locally sent packets too) turns on NAPI for
the bridge ports, and threaded NAPI moves their polling into kernel threads."""
import sys

from pyroute2 import Ethtool


def main(ports: list[str]) -> None:
    e = Ethtool()
    for port in ports:
        f = e.get_features(port)
        f.features["rx-gro"].enable = True
        f.features["rx-udp-gro-forwarding"].enable = True
        e.set_features(port, f)
        with open(f"/sys/class/net/{port}/threaded", "w") as t:
            t.write("1")


if __name__ == "__main__":
    main(sys.argv[1:])
