"""Runs in the attacker's namespace: malformed VRRP packets (valid IP headers,
so that every one reaches the daemons' sockets), crafted with scapy.  argv SRC VIP ROUNDS."""
import socket
import sys
import time

from scapy.all import IP, Raw
from vrrpd import _codec

src, vip, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
GROUP = "224.0.0.18"
good = bytearray(_codec.encode(3, socket.AF_INET, 1, 50, 10, [vip], src=src, dst=GROUP))
v2 = _codec.encode(2, socket.AF_INET, 1, 50, 1, [vip])

def mutate(i, v):
    b = bytearray(good)
    b[i] = v
    return bytes(b)

payloads = {
    "too short": bytes(good[:6]),
    "bad version": mutate(0, 0x41),
    "bad type": mutate(0, 0x32),
    "bad checksum": mutate(6, good[6] ^ 0xFF),
    "address count": mutate(3, 9),
    "zero advert_int": bytes(good[:4]) + b"\0\0" + bytes(good[6:]),
    "unknown vrid": _codec.encode(3, socket.AF_INET, 200, 50, 10, [vip], src=src, dst=GROUP),
    "version mismatch": v2,
    "garbage": bytes(range(7, 47)),
}
packets = [bytes(IP(src=src, dst=GROUP, ttl=255, proto=112) / Raw(p)) for p in payloads.values()]
packets.append(bytes(IP(src=src, dst=GROUP, ttl=64, proto=112) / Raw(bytes(good))))   # bad TTL
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
sent = 0
for _ in range(rounds):
    for p in packets:
        s.sendto(p, (GROUP, 0))
        sent += 1
    time.sleep(0.002)                   # a steady flood, not a burst that overflows buffers
print(sent)
