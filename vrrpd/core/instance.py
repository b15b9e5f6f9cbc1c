"""The runtime's view of one vrrp_instance, shared by the daemon's parts
(vrrpd.core.daemon, .pump, .transitions) and the hooks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vrrpd.engine import INIT
from vrrpd.net.addresses import Vip

if TYPE_CHECKING:
    from vrrpd.core.plan import InstanceSpec


@dataclass(slots=True)
class Instance:
    """Runtime view of one vrrp_instance."""
    name: str
    spec: InstanceSpec
    family: int
    ifname: str
    idx: int = -1
    sock_id: int = -1
    vips: list[Vip] = field(default_factory=list)
    state: int = INIT
    priority: int = 0             # effective priority as last reported
    started: bool = False         # engine.start() done (held while a script is pending)
    transitions: int = 0
    last_transition: float = 0.0
    last_reason: str = ""
    # (what they were built from, ((key, Announce), ...)): Transitions._announces
    announces: tuple = ((), ())
    prebuilt: tuple = ()          # (spec, vips, name, links_gen) its Effects bytes were built from
    garp_paced: bool = False      # announced by GarpScheduler (refresh or pacing configured)
    routed: bool = False          # has virtual_routes or virtual_rules (set with garp_paced)
    vip_fault: bool = False       # a VIP could not be added: FAULT until the retry
