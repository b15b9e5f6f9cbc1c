"""40 owner instances on veth0 start at once, their adverts sent as frames on a packet
socket and flushed again every millisecond while the device queue refuses them, as the
daemon does; prints the socket's tx_packets, tx_deferred, tx_dropped, what is still
pending, the VRRP frames seen on veth1 and the number of flushes."""
import socket
import time

from vrrpd.engine import Engine
from vrrpd.net import sockets

N = 40
raw = sockets.open_vrrp_socket(socket.AF_INET, "veth0", socket.if_nametoindex("veth0"))
link = sockets.open_link_socket()
tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
tap.bind(("veth1", 0))
tap.setblocking(False)
e = Engine(64, defer_sends=True)
sid = e.add_socket(raw.fileno(), socket.AF_INET, socket.if_nametoindex("veth0"))
mac = bytes.fromhex(open("/sys/class/net/veth0/address").read().strip().replace(":", ""))
e.set_link_tx(sid, link.fileno(), mac)
for vrid in range(1, N + 1):
    idx = e.add_instance(sock_id=sid, vrid=vrid, version=3, priority=255, advert_int_cs=100,
                         src=socket.inet_aton("192.0.2.1"), dsts=[socket.inet_aton("224.0.0.18")],
                         vips=[socket.inet_aton("192.0.2.%d" % (100 + vrid))], owner=True)
    e.start(idx, 1, want_master=True)    # an owner is MASTER at once: N adverts queued
flushes = 0
e.flush()
while e.tx_pending() and flushes < 1000:
    time.sleep(0.001)                    # as the daemon retries (core.daemon.TX_RETRY_US)
    e.flush()
    flushes += 1
time.sleep(0.5)
seen = 0
while True:
    try:
        frame = tap.recv(2048)
    except BlockingIOError:
        break
    seen += frame[14 + 9] == 112
c = e.socket_counters(sid)
print(c["tx_packets"], c["tx_deferred"], c["tx_dropped"], e.tx_pending(), seen, flushes)
