"""A storm of valid adverts from a lower-priority router: argv SRC VIP COUNT;
prints the seconds the sends took."""
import socket
import sys
import time

from vrrpd import _codec

src, vip, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
msg = _codec.encode(3, socket.AF_INET, 1, 50, 10, [vip], src=src, dst="224.0.0.18")
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
t = time.monotonic()
for _ in range(n):
    s.sendto(msg, ("224.0.0.18", 0))
print(time.monotonic() - t)
