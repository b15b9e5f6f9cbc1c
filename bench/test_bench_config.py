"""Loading a generated keepalived.conf with 10,000 VRRP instances."""
import pytest

from vrrpd.config import load

N = 10_000


@pytest.fixture(scope="module")
def big_conf(tmp_path_factory):
    parts = ["global_defs {\n    router_id bench\n    vrrp_version 3\n}\n",
             "vrrp_script chk {\n    script /bin/true\n    weight -10\n}\n"]
    for i in range(N):
        dev, vrid = f"eth{i // 255}", i % 255 + 1
        parts.append(
            f"vrrp_instance VI_{i} {{\n    state BACKUP\n    interface {dev}\n"
            f"    virtual_router_id {vrid}\n    priority {100 + i % 100}\n    advert_int 0.1\n"
            f"    virtual_ipaddress {{\n"
            f"        10.{i // 65536}.{i // 256 % 256}.{i % 256}/32 dev {dev}\n    }}\n"
            f"    track_script {{\n        chk\n    }}\n    notify \"/bin/true VI_{i}\"\n}}\n")
    path = tmp_path_factory.mktemp("bench") / "big.conf"
    path.write_text("".join(parts))
    return str(path)


def test_load_10000_instances(benchmark, big_conf):
    result = benchmark.pedantic(load, args=(big_conf,), rounds=3, iterations=1)
    assert result.errors == [] and len(result.config.instances) == N
