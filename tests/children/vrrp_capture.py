"""Runs inside the capturing namespace: print "ready", then one JSON line per
VRRP packet {src, dst, ttl, payload(hex)} on eth0 until COUNT packets or TIMEOUT.
argv FAMILY COUNT TIMEOUT."""
import json
import socket
import struct
import sys

family, count, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ifindex = socket.if_nametoindex("eth0")
s = socket.socket(family, socket.SOCK_RAW, 112)
s.settimeout(timeout)
if family == socket.AF_INET:
    # struct ip_mreqn: group, local address (any), interface index.
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_pton(family, "224.0.0.18") + bytes(4)
                 + struct.pack("=i", ifindex))
else:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                 socket.inet_pton(family, "ff02::12") + struct.pack("=I", ifindex))
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
print("ready", flush=True)
for _ in range(count):
    data, anc, _flags, addr = s.recvmsg(65535, 256)
    if family == socket.AF_INET:
        ihl = (data[0] & 0x0F) * 4
        rec = dict(src=socket.inet_ntop(family, data[12:16]),
                   dst=socket.inet_ntop(family, data[16:20]), ttl=data[8],
                   payload=data[ihl:struct.unpack("!H", data[2:4])[0]].hex())
    else:
        rec = dict(src=addr[0].split("%")[0], payload=data.hex())
        for _level, kind, value in anc:
            if kind == socket.IPV6_PKTINFO:
                rec["dst"] = socket.inet_ntop(family, value[:16])
            elif kind == socket.IPV6_HOPLIMIT:
                rec["ttl"] = struct.unpack("=i", value)[0]
    print(json.dumps(rec), flush=True)
