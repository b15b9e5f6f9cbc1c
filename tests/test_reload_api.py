"""vrrpd.core.reload through the Daemon's public API: a real Daemon in a
namespace (tests/children/reload_api.py) runs A and B; a reload to B' (new
priority and advert_int, one more VIP) and C removes A, keeps B in place (same object and
engine slot, still MASTER, retuned, its new VIP added) and adds C."""
import json
import os
import sys

from netns import veth_host

CHILD = os.path.join(os.path.dirname(__file__), "children", "reload_api.py")


def instance(name: str, vrid: int, priority: int, vips, advert_int: str = "0.1") -> str:
    addrs = "".join(f"        {v}/32 dev eth0\n" for v in vips)
    return (f"vrrp_instance {name} {{\n    state BACKUP\n    interface eth0\n"
            f"    virtual_router_id {vrid}\n    priority {priority}\n    advert_int {advert_int}\n"
            f"    version 3\n    virtual_ipaddress {{\n{addrs}    }}\n}}\n")


OLD = instance("A", 1, 200, ["192.0.2.101"]) + instance("B", 2, 100, ["192.0.2.102"])
NEW = (instance("B", 2, 150, ["192.0.2.102", "192.0.2.112"], "0.5")
       + instance("C", 3, 100, ["192.0.2.103"]))


def run_child(netns, tmp_path, old: str = OLD, new_text: str = NEW) -> dict:
    ns = veth_host(netns("ra"))
    path, new = tmp_path / "keepalived.conf", tmp_path / "new.conf"
    path.write_text(old)
    new.write_text(new_text)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = ns.run(sys.executable, CHILD, str(path), str(new),
                  timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_reload_removes_keeps_and_adds_through_the_public_api(netns, tmp_path):
    out = run_child(netns, tmp_path)
    before, after = out["before"], out["after"]
    assert set(before) == {"A", "B"} and all(i["master"] for i in before.values())
    assert out["addresses_before"] == ["192.0.2.10", "192.0.2.101", "192.0.2.102"]
    r = out["reload"]
    assert r["ok"] and r["removed"] == ["A"] and r["added"] == ["C"] and r["changed"] == ["B"], r
    assert r["replaced"] == [] and r["kept"] == 1
    # A: gone from the daemon and the engine, its VIP removed.
    assert set(after) == {"B", "C"} and out["plan"] == ["B", "C"]
    assert sorted(i["idx"] for i in after.values()) == out["slots_after"]     # no stale slot
    assert before["A"]["id"] not in {i["id"] for i in after.values()}
    # B: the same Instance in the same engine slot, still MASTER, retuned in place.
    assert after["B"]["id"] == before["B"]["id"] and after["B"]["idx"] == before["B"]["idx"]
    assert after["B"]["master"] and after["B"]["priority"] == 150
    assert before["B"]["next_advert_ms"] <= 100 < 150 < after["B"]["next_advert_ms"] <= 500
    assert after["B"]["vips"] == ["192.0.2.102", "192.0.2.112"]
    # C: started, and MASTER (alone on the link).
    assert after["C"]["master"] and after["C"]["vips"] == ["192.0.2.103"]
    assert out["addresses_after"] == ["192.0.2.10", "192.0.2.102", "192.0.2.103", "192.0.2.112"]
    assert out["addresses_stopped"] == ["192.0.2.10"]


def test_a_renamed_instance_is_the_same_instance_under_its_new_name(netns, tmp_path):
    """Instances are matched by identity (VRID, family, interface, source),
    not name (keepalived clear_diff_vrrp): a rename keeps the instance, its
    slot and its state; swap_plan files it under the new name."""
    old = instance("A", 1, 200, ["192.0.2.101"]) + instance("B", 2, 100, ["192.0.2.102"])
    new = instance("A", 1, 200, ["192.0.2.101"]) + instance("B_new", 2, 100, ["192.0.2.102"])
    out = run_child(netns, tmp_path, old, new)
    r = out["reload"]
    assert r["ok"] and r["changed"] == ["B_new"] and r["removed"] == r["added"] == [], r
    before, after = out["before"], out["after"]
    assert list(after) == ["A", "B_new"] and out["plan"] == ["A", "B_new"]
    assert after["B_new"]["id"] == before["B"]["id"] and after["B_new"]["idx"] == before["B"]["idx"]
    assert after["B_new"]["master"] and after["A"]["id"] == before["A"]["id"]
    assert out["addresses_after"] == out["addresses_before"]
