"""One broadcast ARP who-has for argv[1] from eth0; prints the MAC of every reply
within argv[2] seconds (sorted, one per reply)."""
import sys

from scapy.layers.l2 import ARP, Ether
from scapy.sendrecv import srp

ans, _ = srp(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=sys.argv[1]), iface="eth0",
             timeout=float(sys.argv[2]), multi=True, verbose=0)
print(" ".join(sorted(r[ARP].hwsrc for _, r in ans)))
