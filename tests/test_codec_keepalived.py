"""Real keepalived adverts, captured on the wire in a namespace LAN, decoded by vrrpd.

keepalived 2.2.7 runs on host 0; host 1 captures with a raw socket (protocol
112) joined to the VRRP group and prints each packet as JSON.
"""
import json
import os
import subprocess
import sys
import textwrap
from socket import AF_INET, AF_INET6

import pytest

from vrrpd import _codec as codec

KEEPALIVED = "/usr/sbin/keepalived"

pytestmark = [
    pytest.mark.netns, pytest.mark.keepalived,
    pytest.mark.skipif(not os.path.exists(KEEPALIVED), reason="keepalived not installed"),
]

# Runs inside the capturing namespace: print "ready", then one JSON line per
# VRRP packet {src, dst, ttl, payload(hex)} until COUNT packets or TIMEOUT.
CAPTURE = textwrap.dedent("""
    import json, socket, struct, sys
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
            for level, kind, value in anc:
                if kind == socket.IPV6_PKTINFO:
                    rec["dst"] = socket.inet_ntop(family, value[:16])
                elif kind == socket.IPV6_HOPLIMIT:
                    rec["ttl"] = struct.unpack("=i", value)[0]
        print(json.dumps(rec), flush=True)
""")


def run_keepalived(host, tmp_path, instance: str):
    conf = tmp_path / "keepalived.conf"
    conf.write_text("global_defs {\n    router_id codec_test\n}\n" + textwrap.dedent(instance))
    pids = [str(tmp_path / n) for n in ("keepalived.pid", "vrrp.pid")]
    return host.popen(KEEPALIVED, "-n", "-l", "-D", "-f", str(conf),
                      "-p", pids[0], "-r", pids[1], "--vrrp",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def capture(host, family, instance, tmp_path, count=3):
    """Start the capture on lan host 1, keepalived on host 0; return packets."""
    cap = host[1].popen(sys.executable, "-c", CAPTURE, str(family), str(count), "20",
                        stdout=subprocess.PIPE, text=True)
    assert cap.stdout.readline().strip() == "ready"
    ka = run_keepalived(host[0], tmp_path, instance)
    try:
        out, _ = cap.communicate(timeout=30)
    finally:
        ka.kill()
    assert cap.returncode == 0, "capture timed out: keepalived sent no adverts"
    return [json.loads(line) for line in out.splitlines()]


def check(packets, family, **want):
    assert packets
    for p in packets:
        assert p["ttl"] == 255                               # RFC 5798 5.1.1.3
        adv = codec.decode(bytes.fromhex(p["payload"]), family, p["src"], p["dst"])
        assert isinstance(adv, codec.Advert), (adv, p)
        got = {k: getattr(adv, k) for k in want}
        assert got == want


@pytest.fixture
def hosts(lan):
    return lan(hosts=2).hosts


def test_keepalived_v2_ipv4_with_password(hosts, tmp_path):
    packets = capture(hosts, AF_INET, """
        vrrp_instance VI_1 {
            state MASTER
            interface eth0
            version 2
            virtual_router_id 42
            priority 150
            advert_int 1
            authentication {
                auth_type PASS
                auth_pass s3cret
            }
            virtual_ipaddress {
                192.0.2.100/24
                192.0.2.101/24
            }
        }
    """, tmp_path, count=2)
    check(packets, AF_INET, version=2, vrid=42, priority=150, advert_int=1,
          addresses=("192.0.2.100", "192.0.2.101"), auth_type=1, auth_data=b"s3cret\0\0",
          checksum_kind=codec.CKSUM_V2_KIND)


def test_keepalived_v3_ipv4(hosts, tmp_path):
    packets = capture(hosts, AF_INET, """
        vrrp_instance VI_1 {
            state MASTER
            interface eth0
            version 3
            virtual_router_id 43
            priority 200
            advert_int 0.25
            virtual_ipaddress {
                192.0.2.100/24
            }
        }
    """, tmp_path)
    # keepalived 2.2.7 computes the v3 IPv4 checksum over the pseudo-header.
    check(packets, AF_INET, version=3, vrid=43, priority=200, advert_int=25,
          addresses=("192.0.2.100",), auth_type=0, checksum_kind=codec.CKSUM_V3_PSEUDO_KIND)


def test_keepalived_v3_ipv6(hosts, tmp_path):
    packets = capture(hosts, AF_INET6, """
        vrrp_instance VI_6 {
            state MASTER
            interface eth0
            version 3
            virtual_router_id 44
            priority 120
            advert_int 0.25
            virtual_ipaddress {
                fe80::44/64
                2001:db8::100/64
                2001:db8::101/64
            }
        }
    """, tmp_path)
    check(packets, AF_INET6, version=3, vrid=44, priority=120, advert_int=25,
          addresses=("fe80::44", "2001:db8::100", "2001:db8::101"),
          checksum_kind=codec.CKSUM_V3_PSEUDO_KIND)
    assert all(p["src"].startswith("fe80:") and p["dst"] == "ff02::12" for p in packets)


def test_keepalived_priority_zero_on_shutdown(hosts, tmp_path):
    """keepalived's priority-0 advert on SIGTERM (RFC 5798 6.4.3) decodes too."""
    cap = hosts[1].popen(sys.executable, "-c", CAPTURE, str(AF_INET), "50", "20",
                         stdout=subprocess.PIPE, text=True)
    assert cap.stdout.readline().strip() == "ready"
    ka = run_keepalived(hosts[0], tmp_path, """
        vrrp_instance VI_1 {
            state MASTER
            interface eth0
            version 3
            virtual_router_id 45
            priority 100
            advert_int 0.1
            virtual_ipaddress {
                192.0.2.100/24
            }
        }
    """)
    try:
        first = json.loads(cap.stdout.readline())      # it is advertising
        assert codec.decode(bytes.fromhex(first["payload"]), AF_INET,
                            first["src"], first["dst"]).priority == 100
        ka.terminate()
        ka.wait(timeout=10)
        for line in cap.stdout:
            p = json.loads(line)
            adv = codec.decode(bytes.fromhex(p["payload"]), AF_INET, p["src"], p["dst"])
            assert isinstance(adv, codec.Advert) and adv.vrid == 45
            if adv.priority == 0:
                break
        else:
            pytest.fail("no priority-0 advert after SIGTERM")
    finally:
        cap.kill()
