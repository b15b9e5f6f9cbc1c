"""Value converters for keyword arguments: each takes the statement (a Node) and
returns a Python value or raises BadValue with a message for FILE:LINE."""
from __future__ import annotations

import ipaddress
import shlex

from .model import Command, Route, Rule, Track, UnicastPeer, VirtualAddress, ip_interface
from .parser import Node


class BadValue(Exception):
    pass


TRUE = {"on", "true", "yes"}
FALSE = {"off", "false", "no"}
SCOPES = {"site", "link", "host", "nowhere", "global"}


def arg(node: Node, i: int = 0) -> str:
    if len(node.args) <= i:
        raise BadValue(f"'{node.keyword}' needs a value")
    return node.args[i]


def integer(text: str, lo: int, hi: int, what: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise BadValue(f"{what} '{text}' is not an integer") from None
    if not lo <= v <= hi:
        raise BadValue(f"{what} {v} out of range {lo}..{hi}")
    return v


def number(text: str, lo: float, hi: float, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise BadValue(f"{what} '{text}' is not a number") from None
    if v != v or not lo <= v <= hi:
        raise BadValue(f"{what} {text} out of range {lo:g}..{hi:g}")
    return v


def int_range(lo: int, hi: int):
    return lambda node: integer(arg(node), lo, hi, node.keyword)


def float_range(lo: float, hi: float):
    return lambda node: number(arg(node), lo, hi, node.keyword)


def boolean(text: str, what: str) -> bool:
    t = text.lower()
    if t in TRUE:
        return True
    if t in FALSE:
        return False
    raise BadValue(f"{what}: '{text}' is not one of on|off|true|false|yes|no")


def bool_opt(node: Node) -> bool:
    """`keyword [<BOOL>]`: present without a value means on."""
    return boolean(node.args[0], node.keyword) if node.args else True


def flag(node: Node) -> bool:
    if node.args:
        raise BadValue(f"'{node.keyword}' takes no value")
    return True


def string(node: Node) -> str:
    return arg(node)


def interface(node: Node) -> str:
    return ifname(arg(node), node.keyword)


def words(node: Node) -> tuple[str, ...]:
    return tuple(node.args)


def ip(text: str, what: str = "address"):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise BadValue(f"{what} '{text}' is not an IP address") from None


def ip_arg(node: Node):
    return ip(arg(node), node.keyword)


def network(text: str, what: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BadValue(f"{what} '{text}' is not an IP prefix") from None


def split_command(text: str) -> tuple[str, ...]:
    """keepalived: unquoted spaces separate arguments, single quotes group."""
    if not any(c in text for c in "\"'\\"):
        return tuple(text.split())
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = text.split()
    return tuple(parts)


def command(node: Node) -> Command:
    """`notify_x <STRING>|<QUOTED-STRING> [username [groupname]]`."""
    if not node.args:
        raise BadValue(f"'{node.keyword}' needs a script")
    if len(node.args) > 3:
        raise BadValue(f"'{node.keyword}': too many words; quote a script that has arguments")
    argv = split_command(node.args[0])
    if not argv:
        raise BadValue(f"'{node.keyword}': empty script")
    user = node.args[1] if len(node.args) > 1 else None
    group = node.args[2] if len(node.args) > 2 else None
    return Command(argv=argv, user=user, group=group, where=node.where)


def script_line(node: Node) -> Command:
    """vrrp_script's `script`: one quoted command line, or the words as argv."""
    if not node.args:
        raise BadValue("'script' needs a command")
    argv = split_command(node.args[0]) if len(node.args) == 1 else tuple(node.args)
    if not argv:
        raise BadValue("'script': empty command")
    return Command(argv=argv, where=node.where)


def block_items(node: Node) -> list[Node]:
    """Lines of a value block like `virtual_ipaddress { ... }`."""
    if node.children is None:
        raise BadValue(f"'{node.keyword}' needs a {{ ... }} block")
    return node.children


def name_list(node: Node) -> tuple[str, ...]:
    out: list[str] = []
    for item in block_items(node):
        out.append(item.keyword)
        out.extend(item.args)
    return tuple(out)


def tracks(lo: int, hi: int, names=None):
    """track_* blocks: `NAME [weight W] [reverse|noreverse|no_reverse]`;
    names(name, what) checks each name (track_interface: ifname)."""
    def conv(node: Node) -> tuple[Track, ...]:
        out = []
        for item in block_items(node):
            if names is not None:
                names(item.keyword, node.keyword)
            weight, reverse, rest = None, False, list(item.args)
            while rest:
                w = rest.pop(0)
                if w == "weight" and rest:
                    weight = integer(rest.pop(0), lo, hi, f"{node.keyword} {item.keyword} weight")
                elif w == "reverse":
                    reverse = True
                elif w in ("noreverse", "no_reverse"):
                    reverse = False
                else:
                    raise BadValue(f"{node.keyword} {item.keyword}: unexpected '{w}'")
            if item.children is not None:
                raise BadValue(f"{node.keyword}: unexpected block")
            out.append(Track(name=item.keyword, weight=weight, reverse=reverse, where=item.where))
        return tuple(out)
    return conv


def weight_with_reverse(node: Node, lo: int, hi: int) -> tuple[int, bool]:
    w = integer(arg(node), lo, hi, "weight")
    rest = node.args[1:]
    if rest and rest != ["reverse"]:
        raise BadValue(f"weight: unexpected '{' '.join(rest)}'")
    return w, bool(rest)


# -- addresses, routes, rules ------------------------------------------------------

_VIP_FLAGS = {"home": "home", "-nodad": "nodad", "nodad": "nodad", "mngtmpaddr": "mngtmpaddr",
              "noprefixroute": "noprefixroute", "autojoin": "autojoin", "no_track": "no_track",
              "use_vmac": "use_vmac"}


IFNAMSIZ = 16


def ifname(name: str, what: str = "interface") -> str:
    """A Linux interface name (the kernel's dev_valid_name()): 1-15 bytes,
    not '.' or '..', no '/', ':' or white space."""
    n = len(name.encode("utf-8", "surrogateescape"))
    if not 0 < n < IFNAMSIZ:
        raise BadValue(f"{what} '{name}': an interface name has 1 to {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in "/:" or c.isspace() for c in name):
        raise BadValue(f"{what} '{name}' is not a valid interface name")
    return name


def vip(item: Node) -> VirtualAddress:
    """`<IPADDR>[/<MASK>] [brd X] [dev X] [scope X] [label X] [peer X] [flags...]`."""
    words = [item.keyword, *item.args]
    try:
        addr = ip_interface(words[0])
    except ValueError:
        raise BadValue(f"'{words[0]}' is not an IP address[/prefix]") from None
    kw: dict = {}
    i = 1
    while i < len(words):
        w = words[i]
        if w in _VIP_FLAGS:
            kw[_VIP_FLAGS[w]] = True
            i += 1
            continue
        if i + 1 >= len(words):
            raise BadValue(f"'{w}' needs a value" if w in ("brd", "broadcast", "dev", "scope",
                           "label", "peer", "preferred_lft", "track_group")
                           else f"unknown address option '{w}'")
        v = words[i + 1]
        if w in ("brd", "broadcast"):
            kw["brd"] = v if v in ("-", "+") else ip(v, "brd")
        elif w == "dev":
            kw["dev"] = ifname(v, "dev")
        elif w == "scope":
            if v not in SCOPES and not v.isdigit():
                raise BadValue(f"unknown scope '{v}'")
            kw["scope"] = v
        elif w == "label":
            # keepalived: a label of IFNAMSIZ bytes or more is refused; the kernel
            # gets its bytes as written (vrrpd.net.addresses).
            if len(v.encode("utf-8", "surrogateescape")) >= IFNAMSIZ:
                raise BadValue(f"Address label {v} is longer than maximum length {IFNAMSIZ - 1}")
            kw["label"] = v
        elif w == "peer":
            try:
                kw["peer"] = ip_interface(v)
            except ValueError:
                raise BadValue(f"peer '{v}' is not an IP address") from None
        elif w == "preferred_lft":
            kw["preferred_lft"] = v if v == "forever" else integer(v, 0, 2**32 - 1, "preferred_lft")
        elif w == "track_group":
            kw["track_group"] = v
        else:
            raise BadValue(f"unknown address option '{w}'")
        i += 2
    if "peer" in kw and kw["peer"].version != addr.version:
        raise BadValue("peer address family differs from the address")
    return VirtualAddress(address=addr, where=item.where, **kw)


def vips(node: Node) -> tuple[VirtualAddress, ...]:
    return tuple(vip(item) for item in block_items(node))


ROUTE_TYPES = {"unicast", "blackhole", "unreachable", "prohibit", "throw", "local",
               "broadcast", "multicast", "anycast", "nat"}
# ip-route options that take no value
_ROUTE_FLAGS = {"onlink", "pervasive", "no_track", "inet6", "append", "lock"}


def route(item: Node) -> Route:
    words = [item.keyword, *item.args]
    kw: dict = {"options": []}
    i = 0
    if words[i] in ROUTE_TYPES:
        kw["type"] = words[i]
        i += 1
    dest = None
    while i < len(words):
        w = words[i]
        if w in _ROUTE_FLAGS:
            if w in ("no_track", "inet6"):
                kw[w] = True
            else:
                kw["options"].append((w, ""))
            i += 1
            continue
        if dest is None and w not in ("src", "to", "via", "gw", "dev", "table") and "=" not in w:
            dest = w
            i += 1
            continue
        if i + 1 >= len(words):
            raise BadValue(f"route option '{w}' needs a value")
        v = words[i + 1]
        if w == "to":
            dest = v
        elif w == "src":
            kw["src"] = ip(v, "src")
        elif w in ("via", "gw"):
            kw["via"] = ip(v.split()[-1], "via")
        elif w == "dev":
            kw["dev"] = ifname(v, "dev")
        elif w == "table":
            kw["table"] = v
        elif w == "track_group":
            kw["track_group"] = v
        else:
            kw["options"].append((w, v))
        i += 2
    if dest is None:
        raise BadValue("route has no destination")
    kw["destination"] = None if dest == "default" else network(dest, "route destination")
    kw["options"] = tuple(kw["options"])
    return Route(where=item.where, **kw)


def routes(node: Node) -> tuple[Route, ...]:
    return tuple(route(item) for item in block_items(node))


def rule(item: Node) -> Rule:
    words = [item.keyword, *item.args]
    kw: dict = {"options": []}
    i = 0
    while i < len(words):
        w = words[i]
        if w in ("no_track", "inet6"):
            kw[w] = True
            i += 1
            continue
        if w in ("not", "l3mdev"):
            kw["options"].append((w, ""))
            i += 1
            continue
        if i + 1 >= len(words):
            raise BadValue(f"rule option '{w}' needs a value")
        v = words[i + 1]
        if w == "from":
            kw["from_"] = None if v == "all" else network(v, "from")
        elif w == "to":
            kw["to"] = None if v == "all" else network(v, "to")
        elif w in ("table", "lookup"):
            kw["table"] = v
        elif w == "track_group":
            kw["track_group"] = v
        else:
            kw["options"].append((w, v))
        i += 2
    kw["options"] = tuple(kw["options"])
    r = Rule(where=item.where, **kw)
    if r.from_ is not None and r.to is not None and r.from_.version != r.to.version:
        raise BadValue("rule mixes IPv4 and IPv6 prefixes")
    return r


def rules(node: Node) -> tuple[Rule, ...]:
    return tuple(rule(item) for item in block_items(node))


def peers(node: Node) -> tuple[UnicastPeer, ...]:
    out = []
    for item in block_items(node):
        kw: dict = {}
        rest = list(item.args)
        while rest:
            w = rest.pop(0)
            if w in ("min_ttl", "max_ttl") and rest:
                kw[w] = integer(rest.pop(0), 0, 255, w)
            else:
                raise BadValue(f"unicast_peer {item.keyword}: unexpected '{w}'")
        out.append(UnicastPeer(address=ip(item.keyword, "unicast_peer"), where=item.where, **kw))
    return tuple(out)
