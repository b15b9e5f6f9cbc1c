"""Unit tests of the keepalived.conf reader: lexer/parser edge cases, defaults,
validation rules, samples shipped with keepalived."""
import glob
import ipaddress
import os
import re
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keepalived_samples import SAMPLES, SAMPLES_BROKEN
from vrrpd.config import load
from vrrpd.config.lexer import expand_braces, strip_comment, tokenize


def write(tmp_path, text, name="k.conf"):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return str(p)


INST = """
vrrp_instance VI_1 {
    interface eth0
    virtual_router_id 7
    virtual_ipaddress {
        192.0.2.7/24
    }
%s
}
"""


def load_ok(tmp_path, text, **kw):
    r = load(write(tmp_path, text), **kw)
    assert r.errors == [], [str(e) for e in r.errors]
    return r.config


def errors(tmp_path, text, **kw):
    r = load(write(tmp_path, text), **kw)
    assert r.config is None and r.errors
    return [str(e) for e in r.errors]


# -- lexer -----------------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(["a", "b", " ", "\t", "\v", "\x1c", "\x85", "\xa0", "\u2003",
                                "\u200b", "{", "}", "$", "é"]), max_size=30))
def test_tokenize_unquoted_words(text):
    """Without quotes: words split by whitespace (as re's \\s has it), each brace
    a token of its own."""
    assert tokenize(text) == re.findall(r"[{}]|[^\s{}]+", text)


def test_tokenize_quotes_and_braces():
    assert tokenize('a "b c"d {e}') == ["a", "b cd", "{", "e", "}"]
    assert tokenize("x 'it''s'") == ["x", "its"]
    assert tokenize(r'"a\tb\x41\101\\"') == ["a\tbAA\\"]
    assert tokenize('"{"') == ["{"] and type(tokenize('"{"')[0]).__name__ == "Quoted"
    with pytest.raises(ValueError):
        tokenize('"open')


def test_comments_outside_quotes_only():
    assert strip_comment('a # c') == "a "
    assert strip_comment('a ! c') == "a "
    assert strip_comment('notify "/x # y ! z" # c') == 'notify "/x # y ! z" '


def test_brace_expansion():
    assert expand_braces("a{b,c{d,e}}f") == ["abf", "acdf", "acef"]
    assert expand_braces("plain") == ["plain"]


def test_comment_inside_quoted_script(tmp_path):
    cfg = load_ok(tmp_path, INST % '    notify "/bin/echo # x ! y"  # real comment')
    assert cfg.instances["VI_1"].notify.argv == ("/bin/echo", "#", "x", "!", "y")


def test_include_glob_nested_and_relative(tmp_path):
    write(tmp_path, "include sub/*.conf\n", "main.conf")
    write(tmp_path, "include ../deep/{x,y}.inc\n", "sub/a.conf")
    write(tmp_path, INST.replace("VI_1", "VI_X") % "", "deep/x.inc")
    write(tmp_path, INST.replace("VI_1", "VI_Y").replace("id 7", "id 8") % "", "deep/y.inc")
    r = load(str(tmp_path / "main.conf"))
    assert r.errors == []
    assert set(r.config.instances) == {"VI_X", "VI_Y"}
    assert r.config.instances["VI_Y"].where == (str(tmp_path / "sub" / "../deep/y.inc"), 2)
    assert len(r.config.files) == 4


def test_include_missing_is_warning_and_loop_is_error(tmp_path):
    r = load(write(tmp_path, "include nothing-here.conf\n" + INST % ""))
    assert r.errors == [] and "no file matches" in str(r.warnings[0])
    errs = errors(tmp_path, "include k.conf\n")
    assert any("include loop" in e for e in errs)


def test_definitions_and_multiline(tmp_path):
    cfg = load_ok(tmp_path, """
        $ADDRESS_BASE=192.0.${SUB}
        $SUB=2
        $BLOCK= \\
        vrrp_instance VI_${N} { \\
            interface eth0 \\
            virtual_router_id ${N} \\
            virtual_ipaddress { \\
                ${ADDRESS_BASE}.${N}/24 \\
            } \\
        }
        $N=1
        $BLOCK
        $N=2
        $BLOCK
        """)
    assert [str(i.virtual_ipaddress[0].address) for i in cfg.instances.values()] == \
        ["192.0.2.1/24", "192.0.2.2/24"]


def test_undefined_parameter_left_alone(tmp_path):
    cfg = load_ok(tmp_path, INST % '    notify "/bin/echo $HOME ${UNDEF}"')
    assert cfg.instances["VI_1"].notify.argv == ("/bin/echo", "$HOME", "${UNDEF}")


def test_self_referencing_definition_is_error(tmp_path):
    errs = errors(tmp_path, "$A=x $A\n$A\n")
    assert any("does not terminate" in e for e in errs)


def test_conditionals(tmp_path):
    text = INST % """
    @main priority 200
    @backup priority 100
    @^main nopreempt"""
    main = load_ok(tmp_path, text, config_id="main").instances["VI_1"]
    backup = load_ok(tmp_path, text, config_id="backup").instances["VI_1"]
    assert (main.priority, main.nopreempt) == (200, False)
    assert (backup.priority, backup.nopreempt) == (100, True)


def test_conditional_definition(tmp_path):
    text = "@main $P=240\n@backup $P=200\n" + INST % "    priority $P"
    assert load_ok(tmp_path, text, config_id="backup").instances["VI_1"].priority == 200


def test_seq_and_lst(tmp_path):
    cfg = load_ok(tmp_path, INST % """
    virtual_ipaddress_excluded {
        ~SEQ(N, 1, 3) 198.51.100.$N
        ~LST({A, B}, {1, 2}, {3, 4}) 203.0.113.${A}${B}
        ~SEQx(H, 10, 2, 14) 2001:db8::${H}
    }""")
    ex = [str(v.address.ip) for v in cfg.instances["VI_1"].virtual_ipaddress_excluded]
    assert ex == ["198.51.100.1", "198.51.100.2", "198.51.100.3", "203.0.113.12",
                  "203.0.113.34", "2001:db8::a", "2001:db8::c", "2001:db8::e"]


def test_unterminated_block_reports_opening_line(tmp_path):
    errs = errors(tmp_path, "\n\nvrrp_instance VI_1 {\n  interface eth0\n")
    assert any(e.endswith(":3: block 'vrrp_instance' is not closed (missing '}')") for e in errs)


def test_stray_close_brace(tmp_path):
    errs = errors(tmp_path, INST % "" + "}\n")
    assert any("'}' without an open block" in e for e in errs)


def test_brace_on_next_line_and_one_line_block(tmp_path):
    cfg = load_ok(tmp_path, """
        vrrp_instance VI_1
        {
            interface eth0
            virtual_router_id 1
            virtual_ipaddress { 192.0.2.1 dev eth1 }
        }
        """)
    assert cfg.instances["VI_1"].virtual_ipaddress[0].dev == "eth1"


# -- defaults --------------------------------------------------------------------------

def test_instance_defaults(tmp_path):
    i = load_ok(tmp_path, INST % "").instances["VI_1"]
    assert (i.state, i.priority, i.advert_int, i.version, i.family) == ("BACKUP", 100, 1.0, 2, 4)
    assert (i.accept, i.nopreempt, i.preempt_delay, i.down_timer_adverts) == (True, False, 0.0, 3)
    assert (i.garp_master_delay, i.garp_master_repeat) == (5.0, 5)
    assert (i.garp_lower_prio_delay, i.garp_lower_prio_repeat) == (5.0, 5)
    assert (i.garp_master_refresh, i.garp_master_refresh_repeat) == (0.0, 1)
    assert i.advert_int_cs == 100 and i.authentication is None


def test_master_without_priority_is_owner(tmp_path):
    i = load_ok(tmp_path, INST % "    state MASTER").instances["VI_1"]
    assert i.priority == 255 and i.owner


def test_ipv6_instance_is_v3(tmp_path):
    i = load_ok(tmp_path, INST.replace("192.0.2.7/24", "2001:db8::7/64") % "    advert_int 0.03")
    inst = i.instances["VI_1"]
    assert (inst.family, inst.version, inst.advert_int_cs) == (6, 3, 3)


def test_global_inheritance(tmp_path):
    cfg = load_ok(tmp_path, """
        global_defs {
            vrrp_version 3
            vrrp_garp_master_delay 2
            vrrp_garp_master_repeat 1
            vrrp_strict
        }
        """ + INST % "    priority 100")
    i = cfg.instances["VI_1"]
    assert (i.version, i.garp_master_delay, i.garp_lower_prio_delay, i.garp_lower_prio_repeat) == \
        (3, 2.0, 2.0, 1)
    assert i.strict_mode and not i.accept and i.lower_prio_no_advert


def test_script_and_track_defaults(tmp_path):
    cfg = load_ok(tmp_path, """
        vrrp_script s { script "/bin/check 'a b' c" }
        track_file f { file /run/f }
        vrrp_track_process p { process haproxy }
        """ + INST % "    track_script { s }\n    track_file { f weight -3 reverse }")
    s = cfg.scripts["s"]
    assert s.script.argv == ("/bin/check", "a b", "c")
    assert (s.interval, s.effective_timeout, s.weight, s.rise, s.fall, s.init_fail) == \
        (1.0, 1.0, 0, 1, 1, False)
    assert cfg.track_files["f"].weight == 1
    p = cfg.track_processes["p"]
    assert (p.weight, p.quorum, p.quorum_max, p.fork_delay) == (1, 1, None, 0.0)
    t = cfg.instances["VI_1"].track_file[0]
    assert (t.name, t.weight, t.reverse) == ("f", -3, True)


def test_global_defaults(tmp_path):
    g = load_ok(tmp_path, INST % "").global_defs
    assert g.vrrp_mcast_group4 == ipaddress.ip_address("224.0.0.18")
    assert g.vrrp_mcast_group6 == ipaddress.ip_address("ff02::12")
    assert (g.vrrp_version, g.smtp_connect_timeout, g.vrrp_startup_delay) == (2, 30.0, 0.0)


def test_vip_options_and_instance_key(tmp_path):
    cfg = load_ok(tmp_path, INST.replace(
        "192.0.2.7/24", "192.0.2.7/24 brd 192.0.2.255 dev eth1 label eth1:x scope link no_track")
        % "    unicast_src_ip 192.0.2.1\n    unicast_peer {\n 192.0.2.2 min_ttl 250\n }")
    i = cfg.instances["VI_1"]
    v = i.virtual_ipaddress[0]
    assert (v.dev, v.label, v.scope, v.no_track, str(v.brd)) == \
        ("eth1", "eth1:x", "link", True, "192.0.2.255")
    assert i.unicast_peer[0].min_ttl == 250 and i.check_unicast_src
    assert cfg.instance_key(i) == (7, 4, "eth0", ipaddress.ip_address("192.0.2.1"))
    assert i.where[1] == 2 and v.where[1] == 6


def test_sync_group_weighted_scripts_dropped_with_warning(tmp_path):
    text = """
        vrrp_script s { script /bin/true
            weight 10 }
        vrrp_sync_group G { group { VI_1 VI_2 } }
        """ + INST % "    track_script { s }" + \
        INST.replace("VI_1", "VI_2").replace("id 7", "id 8") % "    track_script { s weight 5 }"
    r = load(write(tmp_path, text))
    assert r.errors == []
    # keepalived 2.2.7 drops a member's weighted track_script (tests/test_semantics.py).
    assert [t.weight for i in r.config.instances.values() for t in i.track_script] == []
    assert sum("ignoring track_script s with weight" in str(w) for w in r.warnings) == 2
    assert r.config.instances["VI_1"].sync_group == "G"
    r2 = load(write(tmp_path, text.replace("group { VI_1 VI_2 }",
                                           "group { VI_1 VI_2 }\n sync_group_tracking_weight")))
    assert [t.weight for i in r2.config.instances.values() for t in i.track_script] == [None, 5]


# -- validation ------------------------------------------------------------------------

@pytest.mark.parametrize("extra,message", [
    ("    priority 256", "priority 256 out of range 1..255"),
    ("    virtual_router_id 0", "virtual_router_id 0 out of range"),
    ("    advert_int 1.5", "VRRPv2 advert_int must be whole seconds"),
    ("    version 3\n    advert_int 0.001", "VRRPv3 advert_int must be 0.01..40.95"),
    ("    track_interface { eth1 weight 254 }", "out of range -253..253"),
    ("    track_file { nope }", "track_file 'nope' is not defined"),
    ("    prioriti 100", "unknown keyword 'prioriti' in vrrp_instance VI_1"),
    ("    state master", "state must be MASTER or BACKUP"),
    ("    virtual_ipaddress { 2001:db8::1 }", "is IPv6 but the instance is IPv4"),
    ("    version 3\n    authentication { auth_type PASS\n auth_pass x }", "no authentication"),
    ("    unicast_peer { 192.0.2.9 }\n    use_vmac", "needs vmac_xmit_base"),
])
def test_instance_errors(tmp_path, extra, message):
    errs = errors(tmp_path, INST % extra)
    assert any(message in e for e in errs), errs
    assert all(e.startswith(str(tmp_path)) and e.split(":")[1].isdigit() for e in errs)


def test_duplicate_vrid_same_interface_family(tmp_path):
    two = INST % "" + INST.replace("VI_1", "VI_2") % ""
    assert any("VRID 7 is already used on eth0" in e for e in errors(tmp_path, two))
    # different interface, or other family: fine
    load_ok(tmp_path, INST % "" + INST.replace("VI_1", "VI_2").replace("eth0", "eth1") % "")
    load_ok(tmp_path, INST % "" + INST.replace("VI_1", "VI_2").replace(
        "192.0.2.7/24", "2001:db8::7/64") % "")


def test_sync_group_errors(tmp_path):
    two = INST % "" + INST.replace("VI_1", "VI_2").replace("id 7", "id 8") % ""
    errs = errors(tmp_path, two + "vrrp_sync_group A { group { VI_1 VI_9 } }\n"
                                  "vrrp_sync_group B { group { VI_1 VI_2 } }\n")
    assert any("'VI_9' is not a vrrp_instance" in e for e in errs)
    assert any("'VI_1' is already a member of sync group A" in e for e in errs)


def test_non_vrrp_sections_warn_once_each(tmp_path):
    r = load(write(tmp_path, INST % "" + """
        virtual_server 192.0.2.1 80 { real_server 192.0.2.2 80 { TCP_CHECK { } } }
        global_defs { lvs_flush
            checker_priority 3 }
        """))
    assert r.errors == []
    assert len(r.warnings) == 3


def test_bad_input_never_crashes(tmp_path):
    for junk in ["{", "}", "{{}}", "vrrp_instance", "vrrp_instance {", "\x00\xff", "$=", "@",
                 "~SEQ(", "~SEQ(N, 1, 0, 5) x", "include", "vrrp_instance A B { }",
                 "vrrp_instance A { virtual_ipaddress }", "vrrp_script s { weight }",
                 "vrrp_instance A { unicast_peer { 1.2.3.4 min_ttl } }",
                 "global_defs { vrrp_garp_extra_if all }", "track_file { }"]:
        r = load(write(tmp_path, junk + "\n"))
        assert r.config is None or r.errors == []


def test_missing_file(tmp_path):
    r = load(str(tmp_path / "absent.conf"))
    assert r.config is None and "cannot read" in str(r.errors[0])


# -- keepalived's samples --------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="keepalived samples not installed")
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(SAMPLES, "keepalived.conf.*"))),
                         ids=os.path.basename)
def test_keepalived_samples(path):
    name = os.path.basename(path)
    r = load(path)
    if name in SAMPLES_BROKEN:
        assert r.config is None, SAMPLES_BROKEN[name]
        return
    assert r.errors == [], [str(e) for e in r.errors]
    text = open(path).read()
    assert len(r.config.instances) == text.count("vrrp_instance ")
    assert len(r.warnings) >= text.count("virtual_server ") and \
        all("not VRRP" in str(w) or "does not concern" in str(w) or "as root" in str(w)
            for w in r.warnings)


def test_conditional_sample_with_config_id():
    path = os.path.join(SAMPLES, "keepalived.conf.conditional_conf")
    if not os.path.exists(path):
        pytest.skip("sample not installed")
    r = load(path, config_id="high")
    assert r.errors == []
    assert r.config.instances["VI_0"].priority == 170
    assert r.config.scripts["check_VI_0"].script.argv == (
        "/etc/keepalived/scripts/check_high_VI_0.sh",)


@pytest.mark.parametrize("text, message", [
    # keepalived: "Address label X is longer than maximum length 15 - removing address".
    ('192.0.2.9/32 dev eth0 label eth0:0123456789ab', "longer than maximum length 15"),
    ('192.0.2.9/32 dev eth0/1', "not a valid interface name"),
    ('192.0.2.9/32 dev eth0 label "eth0:\\000"', "NUL byte"),
])
def test_vip_checks_start_up_would_fail(tmp_path, text, message):
    """`vrrpd -t` refuses what the kernel or start-up would refuse."""
    conf = INST.replace("192.0.2.7/24", text) % ""
    assert any(message in e for e in errors(tmp_path, conf)), errors(tmp_path, conf)


@pytest.mark.parametrize("line, message", [
    ('notify_master "/bin/echo a\\000b"', "NUL byte"),
    ("notify_backup /bin/true\x00x", "NUL byte"),
    ("interface eth0123456789abcdef", "1 to 15 bytes"),
    ("interface eth:0", "not a valid interface name"),
    ("track_interface {\n eth 0/1\n }", "unexpected"),
    ("track_interface {\n a/b\n }", "not a valid interface name"),
    ("use_vmac vrrp.0123456789abcdef", "1 to 15 bytes"),
])
def test_instance_checks_start_up_would_fail(tmp_path, line, message):
    errs = errors(tmp_path, INST % line)
    assert any(message in e for e in errs), errs


def test_label_bytes_reach_the_kernel_as_written():
    """A label is passed as its bytes (keepalived passes the C string): a
    non-UTF-8 byte must not fail the VIP batch."""
    from pyroute2.netlink import rtnl
    from vrrpd.net.addresses import Vip, _Template
    vip = Vip.parse("192.0.2.9/32", 1, label="eth0:\udcff")
    assert b"eth0:\xff\x00" in _Template(vip, rtnl.RTM_NEWADDR).data


def test_vip_addresses_are_standard_interfaces_without_a_stored_network(tmp_path):
    """The daemon holds every VIP's address for its life: it keeps the
    address and prefix length only, and behaves as ipaddress.ip_interface()."""
    import pickle
    cfg = load_ok(tmp_path,
                  INST % "    virtual_ipaddress_excluded {\n 2001:db8::7/64 peer 2001:db8::8\n }")
    inst = cfg.instances["VI_1"]
    excluded = inst.virtual_ipaddress_excluded[0]
    for a in (inst.virtual_ipaddress[0].address, excluded.address, excluded.peer):
        std = ipaddress.ip_interface(str(a))
        assert isinstance(a, type(std))
        assert a == std and hash(a) == hash(std) and repr(a) == repr(std)
        assert (a.ip, a.network, a.netmask, a.with_prefixlen) == \
            (std.ip, std.network, std.netmask, std.with_prefixlen)
        assert "network" not in vars(a) and "netmask" not in vars(a)
        again = pickle.loads(pickle.dumps(a))
        assert type(again) is type(a) and again == std
