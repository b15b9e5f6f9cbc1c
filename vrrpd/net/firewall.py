"""vrrp_strict / strict_mode at run time: drop traffic to the VIPs of a master that is
not in accept mode (RFC 5798 6.4.3: a non-owner without Accept_Mode must not accept
packets addressed to the IPvX addresses it is master for), with nftables, the way
keepalived 2.2.7 does it.

The configuration rules of strict mode (no unicast, no authentication, at least one VIP,
state MASTER iff owner, ...) are checked by config/validate.py; `accept` defaults to off
under strict mode in config/build.py.  This module only decides who needs the drop rule
(needs_drop) and keeps the rule set (VipFirewall).

Layout, as keepalived builds it (read with `nft list ruleset` next to a running
keepalived 2.2.7, which is built with nftables only): tables `ip NAME` and `ip6 NAME`
(NAME = global `nftables`, default "keepalived"), each with a set `vips` and base chains
`in` (hook input) and `out` (hook output) at priority `nftables_priority` (default -1)
dropping `daddr @vips` / `saddr @vips`.  ip6 first accepts neighbour solicitations and
advertisements (hosts must still resolve the VIP) and sends link-local addresses through
`in_link_local`/`out_link_local` chains matching `address . interface`, since a
link-local VIP only exists on its own link.  Per transition keepalived adds the drop
rule before the VIPs and removes it after them.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
from typing import Iterable

from vrrpd.config.model import Config, VrrpInstance

log = logging.getLogger("vrrpd.net.firewall")

DEFAULT_TABLE = "keepalived"
DEFAULT_PRIORITY = -1


def needs_drop(inst: VrrpInstance) -> bool:
    """keepalived's vrrp_handle_accept_mode(): owners and accept-mode instances take
    traffic to their VIPs; everyone else drops it while master."""
    return inst.priority != 255 and not inst.accept


def firewall_for(cfg: Config) -> "VipFirewall | None":
    """The firewall the daemon needs for this configuration, or None."""
    if not any(needs_drop(i) for i in cfg.instances.values()):
        return None
    g = cfg.global_defs
    if g.vrrp_iptables is not None or g.vrrp_ipsets is not None:
        # Debian's keepalived 2.2.7 is built without iptables support as well.
        log.warning("vrrp_iptables/vrrp_ipsets are not supported; using nftables table %s",
                    g.nftables or DEFAULT_TABLE)
    priority = DEFAULT_PRIORITY if g.nftables_priority is None else g.nftables_priority
    return VipFirewall(table=g.nftables or DEFAULT_TABLE, priority=priority,
                       counters=g.nftables_counters)


class VipFirewall:
    """Keeps keepalived's nftables drop rules for VIPs: add_vips()/remove_vips() take
    addresses.Vip-like objects (.address text, .ifindex); every change is one `nft -f`
    transaction (atomic; a failure changes nothing and is counted and logged)."""

    def __init__(self, table: str = DEFAULT_TABLE, priority: int = DEFAULT_PRIORITY,
                 counters: bool = False, nft: str | None = None):
        self.table = table
        self.priority = priority
        self.counters = counters
        self.nft = nft or shutil.which("nft") or "/usr/sbin/nft"
        self._elements: dict[tuple[str, str], set[str]] = {}   # (family, set) -> elements
        self._tables: set[str] = set()                          # families set up: "ip", "ip6"
        self.stats = dict(added=0, removed=0, failed=0)
        self._lock = asyncio.Lock()

    async def add_vips(self, vips: Iterable) -> bool:
        return await self._update(vips, adding=True)

    async def remove_vips(self, vips: Iterable) -> bool:
        return await self._update(vips, adding=False)

    async def close(self) -> bool:
        """Shutdown: delete the tables we created."""
        async with self._lock:
            script = "".join(f"delete table {fam} {self.table}\n" for fam in sorted(self._tables))
            ok = not script or await self._run(script)
            self._tables.clear()
            self._elements.clear()
            return ok

    # -- internals -------------------------------------------------------------------
    @staticmethod
    def _element(vip) -> tuple[str, str, str]:
        """(family, set name, element text) for one VIP."""
        addr = ipaddress.ip_address(vip.address)
        if addr.version == 4:
            return "ip", "vips", str(addr)
        if addr.is_link_local:
            return "ip6", "vips_link_local", f"{addr} . {vip.ifindex}"
        return "ip6", "vips", str(addr)

    async def _update(self, vips: Iterable, adding: bool) -> bool:
        async with self._lock:
            wanted: dict[tuple[str, str], list[str]] = {}
            for vip in vips:
                fam, name, elem = self._element(vip)
                have = self._elements.get((fam, name), set())
                if (elem in have) != adding and elem not in wanted.get((fam, name), ()):
                    wanted.setdefault((fam, name), []).append(elem)
            if not wanted:
                return True
            verb = "add" if adding else "delete"
            lines = [self._setup(fam) for fam in sorted({f for f, _ in wanted})
                     if adding and fam not in self._tables]
            lines += [f"{verb} element {fam} {self.table} {name} {{ {', '.join(elems)} }}\n"
                      for (fam, name), elems in wanted.items()]
            n = sum(len(e) for e in wanted.values())
            if not await self._run("".join(lines)):
                self.stats["failed"] += n
                return False
            for (fam, name), elems in wanted.items():
                have = self._elements.setdefault((fam, name), set())
                (have.update if adding else have.difference_update)(elems)
                if adding:
                    self._tables.add(fam)
            self.stats["added" if adding else "removed"] += n
            return True

    def _setup(self, fam: str) -> str:
        """The table for one family, replacing any residue of an earlier run."""
        drop = "counter drop" if self.counters else "drop"
        hook = f"type filter hook {{}} priority {self.priority}; policy accept;"
        ip = "ip" if fam == "ip" else "ip6"
        body = [f"\tset vips {{ type {'ipv4' if fam == 'ip' else 'ipv6'}_addr; }}"]
        rules_in: list[str] = []
        rules_out: list[str] = []
        if fam == "ip6":
            body += ["\tset neighbor-discovery { type icmpv6_type; flags constant; "
                     "elements = { nd-neighbor-solicit, nd-neighbor-advert }; }",
                     "\tset vips_link_local { type ipv6_addr . iface_index; }"]
        body += [f"\tchain out {{ {hook.format('output')} }}",
                 f"\tchain in {{ {hook.format('input')} }}"]
        if fam == "ip6":
            body += [f"\tchain in_link_local {{ ip6 daddr . iif @vips_link_local {drop}; }}",
                     f"\tchain out_link_local {{ ip6 saddr . oif @vips_link_local {drop}; }}"]
            for rules, way, addr in ((rules_in, "in", "daddr"), (rules_out, "out", "saddr")):
                rules += ["icmpv6 type @neighbor-discovery accept",
                          f"ip6 {addr} fe80::/10 goto {way}_link_local"]
        rules_in.append(f"{ip} daddr @vips {drop}")
        rules_out.append(f"{ip} saddr @vips {drop}")
        t = f"{fam} {self.table}"
        return (f"table {t}\ndelete table {t}\ntable {t} {{\n" + "\n".join(body) + "\n}\n"
                + "".join(f"add rule {t} in {r}\n" for r in rules_in)
                + "".join(f"add rule {t} out {r}\n" for r in rules_out))

    async def _run(self, script: str) -> bool:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.nft, "-f", "-", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate(script.encode())
        except OSError as e:
            log.error("cannot run %s: %s", self.nft, e)
            return False
        if proc.returncode != 0:
            log.error("nft failed (%d): %s", proc.returncode, err.decode(errors="replace").strip())
            return False
        return True
