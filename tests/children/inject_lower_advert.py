"""One VRRPv3 advert for VRID 1 on eth0, from a router that is not running:
argv SRC PRIORITY ADVERT_CS."""
import sys

from scapy.all import IP, send
from scapy.layers.vrrp import VRRPv3

pkt = IP(src=sys.argv[1], dst="224.0.0.18", ttl=255) / VRRPv3(
    vrid=1, priority=int(sys.argv[2]), adv=int(sys.argv[3]), ipcount=1, addrlist=["198.19.0.1"])
send(pkt, iface="eth0", verbose=False)
