"""What a reload says about the instances it removes: the same
configuration and the same SIGHUP reload for keepalived 2.2.7 and for vrrpd,
and the same notify scripts (argv, start order), notify fifo lines and
priority-0 adverts.

keepalived.conf(5): `notify_deleted` makes a removed instance report DELETED
"rather than the default FAULT"; with a script, that script runs as well.
The tables below are what keepalived 2.2.7 did here (and strace of its VRRP
process): per removed instance, in the old configuration's order and
before any new instance starts, a master sends priority 0 and removes its
VIPs; then, whatever its state, notify_deleted's script (if given) is
started, then the generic notify with INSTANCE, name, DELETED (FAULT
without `notify_deleted`, and then nothing at all for an instance already
in FAULT) and the effective priority, then the fifo line.  notify_fault /
notify_backup / notify_stop do not run, and a sync group says nothing about
a member it lost (nor when it goes away itself).  The keepalived run checks
the tables still hold; the vrrpd run, that vrrpd matches them.

The peer (host 1, keepalived, priority 250 on VRIDs 5-7) makes the B_*
instances backups; a failing weight-0 script puts the F_* ones in FAULT;
the others are masters.
"""
from __future__ import annotations

import re
import shutil
import signal
import time

import pytest

from advert_capture import Capture
from daemons import DaemonProc, reconfigure, vips_on
from netns import wait_for
from scriptfiles import RECORDER, recorded, write_script
from vrrpd.lab.conf import LabSpec, vip

pytestmark = [pytest.mark.netns, pytest.mark.keepalived]

GLOBAL = """global_defs {{
  router_id {rid}
  script_user root
  enable_script_security
  vrrp_version 3
  vrrp_notify_fifo @FIFO@
}}
"""
TRACK = """vrrp_script chk_down {{
  script "/usr/bin/test ! -e {flag}"
  interval 1
  weight -10
}}
vrrp_script chk_fail {{
  script "/bin/false"
  interval 1
}}
"""

# name, VRID, notify_deleted (None: absent, "": bare, "script"), track script
INSTANCES = [
    ("VI_1", 1, None, None),           # kept, master
    ("M_script", 4, "script", None),   # removed masters, backups and faults,
    ("B_none", 5, None, None),         # in no particular order
    ("M_none", 2, None, None),
    ("B_bare", 6, "", None),
    ("M_bare", 3, "", "chk_down"),     # chk_down fails once it is master: 190 is reported
    ("F_none", 15, None, "chk_fail"),  # already FAULT: nothing is reported
    ("B_script", 7, "script", None),
    ("F_bare", 16, "", "chk_fail"),
    ("S_1", 8, None, None),            # G1 = S_1, S_2, S_3 -> S_1, S_3
    ("S_2", 9, "script", None),
    ("S_3", 10, None, None),
    ("T_1", 11, None, None),           # G2 = T_1, T_2 -> gone, T_1 stays alone
    ("T_2", 12, "", None),
]
REMOVED = {2, 3, 4, 5, 6, 7, 9, 12, 15, 16}   # by VRID: keepalived matches instances by identity
BACKUPS = {5, 6, 7}
FAULTS = {15, 16}
# Starts with the reload, under the name of a removed instance: what the old
# T_2 runs are its own scripts, not these (tagged T_2.new).
ADDED = ("T_2", 13, None, None)
# A second reload replaces VI_1 the same way, with nothing else changed
# (vrrpd then updates its notify scripts in place rather than rebuilding them).
AGAIN = ("VI_1", 14, None, None)


def _vip(vrid: int) -> str:
    return f"192.0.2.{100 + vrid}"


def _instance(name, vrid, deleted, track, rec, vipcheck, tag=None) -> str:
    tag = tag or name
    s = (f"vrrp_instance {name} {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {vrid}\n"
         f"  priority 200\n  advert_int 0.1\n  virtual_ipaddress {{\n    {_vip(vrid)}/32\n  }}\n")
    for kind in ("master", "backup", "fault", "stop"):
        s += f'  notify_{kind} "{rec} {tag} {kind}"\n'
    s += f'  notify "{rec} {tag} notify"\n'
    if deleted == "":
        s += "  notify_deleted\n"
    elif deleted:
        # The script also says whether the instance's VIP is still there:
        # keepalived removes it first.  (It starts ms after it was asked for,
        # so this shows the VIP went, not reliably that it went first.)
        s += f'  notify_deleted "{vipcheck} {tag} {_vip(vrid)}"\n'
    if track:
        s += f"  track_script {{\n    {track}\n  }}\n"
    return s + "}\n"


def _group(name, members, rec) -> str:
    s = (f"vrrp_sync_group {name} {{\n  group {{\n"
         + "".join(f"    {m}\n" for m in members) + "  }\n")
    for kind in ("master", "backup", "fault", "stop"):
        s += f'  notify_{kind} "{rec} {name} {kind}"\n'
    return s + f'  notify "{rec} {name} notify"\n}}\n'


def configs(rec: str, vipcheck: str, flag: str) -> tuple[str, str, str]:
    """The configuration at start, after the first reload, after the second."""
    head = GLOBAL.format(rid="dut") + TRACK.format(flag=flag)
    before = head + "".join(_instance(*i, rec, vipcheck) for i in INSTANCES)
    before += _group("G1", ["S_1", "S_2", "S_3"], rec) + _group("G2", ["T_1", "T_2"], rec)
    kept = [i for i in INSTANCES if i[1] not in REMOVED]
    tail = _instance(*ADDED, rec, vipcheck, tag="T_2.new") + _group("G1", ["S_1", "S_3"], rec)
    after = head + "".join(_instance(*i, rec, vipcheck) for i in kept) + tail
    again = head + "".join(_instance(*i, rec, vipcheck) for i in kept[1:]) + tail
    return before, after, again + _instance(*AGAIN, rec, vipcheck, tag="VI_1.new")


PEER = GLOBAL.format(rid="peer") + "".join(
    f"vrrp_instance P{vrid} {{\n  state BACKUP\n  interface eth0\n  virtual_router_id {vrid}\n"
    f"  priority 250\n  advert_int 0.1\n  virtual_ipaddress {{\n    {_vip(vrid)}/32\n  }}\n}}\n"
    for _, vrid, _, _ in INSTANCES if vrid in BACKUPS)

# keepalived 2.2.7, measured: (argc, args) of each script started after the
# reload, in start order, and the fifo lines, in order.
EXPECTED_SCRIPTS = [
    (2, "<M_script> <192.0.2.104> gone"),
    (6, "<M_script> <notify> <INSTANCE> <M_script> <DELETED> <200>"),
    (6, "<B_none> <notify> <INSTANCE> <B_none> <FAULT> <200>"),
    (6, "<M_none> <notify> <INSTANCE> <M_none> <FAULT> <200>"),
    (6, "<B_bare> <notify> <INSTANCE> <B_bare> <DELETED> <200>"),
    (6, "<M_bare> <notify> <INSTANCE> <M_bare> <DELETED> <190>"),
    (2, "<B_script> <192.0.2.107> gone"),
    (6, "<B_script> <notify> <INSTANCE> <B_script> <DELETED> <200>"),
    (6, "<F_bare> <notify> <INSTANCE> <F_bare> <DELETED> <200>"),
    (2, "<S_2> <192.0.2.109> gone"),
    (6, "<S_2> <notify> <INSTANCE> <S_2> <DELETED> <200>"),
    (6, "<T_2> <notify> <INSTANCE> <T_2> <DELETED> <200>"),
    (2, "<T_2.new> <backup>"),                     # the added instance starts afterwards
    (6, "<T_2.new> <notify> <INSTANCE> <T_2> <BACKUP> <200>"),
    (2, "<T_2.new> <master>"),
    (6, "<T_2.new> <notify> <INSTANCE> <T_2> <MASTER> <200>"),
]
EXPECTED_FIFO = [
    'INSTANCE "M_script" DELETED 200',
    'INSTANCE "B_none" FAULT 200',
    'INSTANCE "M_none" FAULT 200',
    'INSTANCE "B_bare" DELETED 200',
    'INSTANCE "M_bare" DELETED 190',
    'INSTANCE "B_script" DELETED 200',
    'INSTANCE "F_bare" DELETED 200',
    'INSTANCE "S_2" DELETED 200',
    'INSTANCE "T_2" DELETED 200',              # no GROUP line for G1 or G2
    'INSTANCE "T_2" BACKUP 200',
    'INSTANCE "T_2" MASTER 200',
]
EXPECTED_AGAIN = ([(6, "<VI_1> <notify> <INSTANCE> <VI_1> <FAULT> <200>"),
                   (2, "<VI_1.new> <backup>"),
                   (6, "<VI_1.new> <notify> <INSTANCE> <VI_1> <BACKUP> <200>"),
                   (2, "<VI_1.new> <master>"),
                   (6, "<VI_1.new> <notify> <INSTANCE> <VI_1> <MASTER> <200>")],
                  ['INSTANCE "VI_1" FAULT 200', 'INSTANCE "VI_1" BACKUP 200',
                   'INSTANCE "VI_1" MASTER 200'])


@pytest.mark.parametrize("kind", ["keepalived", "vrrpd"])
def test_removed_instances_report_like_keepalived(kind, lan, tmp_path):
    log = tmp_path / "log"
    rec = write_script(tmp_path / "rec.sh", RECORDER.format(log=log))
    vipcheck = write_script(tmp_path / "vipcheck.sh", (
        'if ip -o addr show dev eth0 | grep -q " $2/"; then v=present; else v=gone; fi\n'
        + RECORDER.format(log=log).replace('echo "$l"', 'echo "$l $v"')))
    flag = tmp_path / "down"
    before, after, again = configs(rec, vipcheck, str(flag))
    net = lan(hosts=2)
    peer = DaemonProc(net.hosts[1], "keepalived", PEER, str(tmp_path), tag="peer").start()
    dut = None

    def reload(text: str, done: str, scripts: int) -> tuple[list, list]:
        """SIGHUP with `text`: the scripts started (at least `scripts`) and the
        fifo lines written from then until the line `done`, and 0.5 s more."""
        n_before = len(log.read_text().splitlines())
        reconfigure(dut, text)
        t0 = dut.signal(signal.SIGHUP)
        wait_for(lambda: done in [x for t, x in dut.fifo.lines if t >= t0], 10, what=done)
        time.sleep(0.5)
        return ([(argc, args) for _, argc, args in recorded(log, n_before + scripts)[n_before:]],
                [x for t, x in dut.fifo.lines if t >= t0])

    try:
        for vrid in BACKUPS:
            peer.wait_state(f"P{vrid}", "MASTER")
        dut = DaemonProc(net.hosts[0], kind, before, str(tmp_path)).start()
        for name, vrid, _, _ in INSTANCES:
            dut.wait_state(name, "BACKUP" if vrid in BACKUPS else "FAULT" if vrid in FAULTS
                           else "MASTER")
        masters = {vrid for _, vrid, _, _ in INSTANCES} - BACKUPS - FAULTS
        wait_for(lambda: {_vip(v) + "/32" for v in masters} <= vips_on(net.hosts[0]), 10,
                 what="the masters' VIPs")
        # Tracking lowers M_bare's priority without a transition (chk_down runs
        # every second): what the removal reports is the effective priority.
        flag.write_text("")
        time.sleep(1.5)
        cap = Capture(net.hosts[1], 2.0)
        scripts, fifo = reload(after, 'INSTANCE "T_2" MASTER 200', len(EXPECTED_SCRIPTS))
        assert scripts == EXPECTED_SCRIPTS, scripts
        assert fifo == EXPECTED_FIFO, fifo
        # The wire: a removed master's last advert has priority 0; a removed
        # backup or fault sent none; the others go on at 200.
        packets = cap.packets()
        last = {vrid: prio for _, _, src, vrid, prio, _ in packets if src == net.host_ip(0)}
        assert last == {v: 0 if v in REMOVED else 200 for v in masters | {ADDED[1]}}, last
        assert {v for v in masters | {ADDED[1]} if _vip(v) + "/32" in vips_on(net.hosts[0])} == \
            masters - REMOVED | {ADDED[1]}

        assert reload(again, 'INSTANCE "VI_1" MASTER 200', len(EXPECTED_AGAIN[0])) == EXPECTED_AGAIN
    finally:
        for d in (dut, peer):
            if d is not None:
                d.stop()


# -- At scale: 1,000 masters, a reload removes 100 that hold routes and rules -------------
#
# Issue 16: everything a removed master held goes with it -- its VIPs, its
# virtual_routes and virtual_rules, its strict-mode nftables set element --
# and notify_deleted runs for each, as keepalived 2.2.7 does.  The same
# configuration and SIGHUP for both daemons; the 900 others see nothing.
SCALE = 1000
SCALE_REMOVED = range(3, SCALE, 10)         # 100 instances, spread over the 4 NICs


def _scale_config(spec, rec: str, removed: set[int], keep_removed: bool) -> str:
    """vrrp_strict (every master's VIPs in the nftables set); the instances in
    `removed` also have a route, a rule and notify scripts; keep_removed=False
    leaves them out."""
    out = ["global_defs {\n  router_id dut\n  script_user root\n  enable_script_security\n"
           "  vrrp_strict\n  vrrp_garp_master_delay 0\n  vrrp_notify_fifo @FIFO@\n}\n"]
    for i in range(spec.instances):
        if i in removed and not keep_removed:
            continue
        nic, vrid = spec.placement(i)
        s = (f"vrrp_instance VI_{i} {{\n  state BACKUP\n  interface eth{nic}\n"
             f"  virtual_router_id {vrid}\n  priority 200\n  advert_int 1\n  version 3\n"
             f"  virtual_ipaddress {{\n    {vip(spec, i)}/32 dev eth{nic}\n  }}\n")
        if i in removed:
            k = sorted(removed).index(i)
            s += (f"  virtual_routes {{\n    198.51.100.{k}/32 dev eth{nic}\n  }}\n"
                  f"  virtual_rules {{\n    from 198.51.100.{k}/32 table {1000 + k}\n  }}\n"
                  f'  notify_deleted "{rec} deleted VI_{i}"\n  notify "{rec} notify"\n')
        out.append(s + "}\n")
    return "".join(out)


def _in_order(log) -> list[tuple[int, int, str]]:
    """The recorder's lines as written (recorded() sorts by PID, which may wrap)."""
    rows = []
    for line in log.read_text().splitlines():
        pid, argc, args = (line + " ").split(" ", 2)
        rows.append((int(pid), int(argc), args.strip()))
    return rows


def _held(ns, spec) -> tuple[set[str], set[str], set[str], set[str]]:
    """What the host holds: VIPs on eth0..ethN, the 198.51.100.0/24 routes,
    the rules from that range, the addresses in keepalived's nftables set."""
    vips = set()
    for nic in range(spec.nics):
        vips |= {a.split("/")[0] for a in vips_on(ns, f"eth{nic}")}
    routes = {line.split()[0].split("/")[0] for line in
              ns.run("ip", "-o", "route", "show", "table", "all").stdout.splitlines()
              if line.startswith("198.51.100.")}
    rules = set(re.findall(r"from (198\.51\.100\.\d+) lookup", ns.run("ip", "rule", "show").stdout))
    r = ns.run("nft", "list", "set", "ip", "keepalived", "vips", check=False)
    nft = set(re.findall(r"\d+\.\d+\.\d+\.\d+", r.stdout.split("elements", 1)[-1])) \
        if r.returncode == 0 and "elements" in r.stdout else set()
    return vips, routes, rules, nft


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables not installed")
@pytest.mark.parametrize("kind", ["keepalived", "vrrpd"])
def test_reload_removes_100_of_1000_with_routes_rules_and_nft(kind, lan, tmp_path):
    spec = LabSpec(instances=SCALE)
    removed = set(SCALE_REMOVED)
    assert len(removed) == 100
    log = tmp_path / "log"
    rec = write_script(tmp_path / "rec.sh", RECORDER.format(log=log))
    net = lan(hosts=1, nics=spec.nics)
    host = net.hosts[0]
    dut = DaemonProc(host, kind, _scale_config(spec, rec, removed, True), str(tmp_path),
                     detail=False)
    try:
        dut.start()
        dut.wait_all([f"VI_{i}" for i in range(SCALE)], "MASTER", timeout=60)
        gone_vips = {vip(spec, i) for i in removed}
        kept_vips = {vip(spec, i) for i in range(SCALE)} - gone_vips
        ours = {f"198.51.100.{k}" for k in range(len(removed))}
        full = (kept_vips | gone_vips, ours, ours, kept_vips | gone_vips)

        def held():
            v, ro, ru, n = _held(host, spec)
            return (v & (kept_vips | gone_vips), ro, ru, n)
        wait_for(lambda: held() == full, 20, what=f"all held before the reload: {held()}")
        n_before = len(recorded(log, 2 * len(removed), timeout=20))    # their BACKUP, MASTER
        assert n_before == 2 * len(removed)

        reconfigure(dut, _scale_config(spec, rec, removed, False))
        t0 = dut.signal(signal.SIGHUP)
        last = f'INSTANCE "VI_{max(removed)}" DELETED 200'
        wait_for(lambda: last in [x for t, x in dut.fifo.lines if t >= t0], 30, what=last)
        after = (kept_vips, set(), set(), kept_vips)
        wait_for(lambda: held() == after, 20, what="what the removed held is gone")
        # Each removed instance: notify_deleted with its own arguments only,
        # then the generic notify with INSTANCE name DELETED priority.
        recorded(log, n_before + 2 * len(removed), timeout=20)
        time.sleep(1.0)                     # and nothing more comes
        rows = [r for _, *r in _in_order(log)[n_before:]]
        expect = sorted([(2, f"<deleted> <VI_{i}>") for i in removed] +
                        [(5, f"<notify> <INSTANCE> <VI_{i}> <DELETED> <200>") for i in removed])
        assert sorted((argc, args) for argc, args in rows) == expect
        # One fifo line per removed instance, in the old configuration's
        # order; nothing for the 900 others, which stay MASTER.
        assert [x for t, x in dut.fifo.lines if t >= t0] == \
            [f'INSTANCE "VI_{i}" DELETED 200' for i in sorted(removed)]
        assert held() == after
        dut.check_alive()
    finally:
        dut.stop()
