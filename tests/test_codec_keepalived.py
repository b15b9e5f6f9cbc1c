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

from children import child
from vrrpd import _codec as codec

KEEPALIVED = "/usr/sbin/keepalived"

pytestmark = [
    pytest.mark.netns, pytest.mark.keepalived,
    pytest.mark.skipif(not os.path.exists(KEEPALIVED), reason="keepalived not installed"),
]


def run_keepalived(host, tmp_path, instance: str):
    conf = tmp_path / "keepalived.conf"
    conf.write_text("global_defs {\n    router_id codec_test\n}\n" + textwrap.dedent(instance))
    pids = [str(tmp_path / n) for n in ("keepalived.pid", "vrrp.pid")]
    return host.popen(KEEPALIVED, "-n", "-l", "-D", "-f", str(conf),
                      "-p", pids[0], "-r", pids[1], "--vrrp",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def capture(host, family, instance, tmp_path, count=3):
    """Start the capture on lan host 1, keepalived on host 0; return packets."""
    cap = host[1].popen(sys.executable, child("vrrp_capture"), str(family), str(count), "20",
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
    cap = hosts[1].popen(sys.executable, child("vrrp_capture"), str(AF_INET), "50", "20",
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
