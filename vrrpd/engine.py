"""The typed face of the VRRP protocol engine (the compiled vrrpd._engine).

The only module that imports vrrpd._engine: the rest of vrrpd, the tests and
the benchmarks use the names here.  The engine's vocabulary as IntEnums whose
values are the engine's own constants (RFC 5798 6.4 states in keepalived's
numbering plus FAULT; transition reasons; event kinds), and the one table of
their names.  IntEnum members compare equal to the ints the engine returns,
so hot paths compare `engine.state(idx) == MASTER` without converting.

    Engine      the engine (time injected: every entry point takes `now`, us)
    Event       what pop_events() hands Python: (idx, kind, code, detail)
    State       INIT, BACKUP, MASTER, FAULT
    Reason      why a transition happened (notify and log words: REASON_NAMES)
    EventKind   STATE, RX_LOWER_PRI, REJECT, SOCK_REJECT
"""
from enum import IntEnum

from vrrpd import _engine
from vrrpd._engine import Engine, Event, REJECT_NAMES

__all__ = [
    "Engine", "Event", "State", "Reason", "EventKind",
    "STATE_NAMES", "REASON_NAMES", "REJECT_NAMES",
    "INIT", "BACKUP", "MASTER", "FAULT",
    "EV_STATE", "EV_RX_LOWER_PRI", "EV_REJECT", "EV_SOCK_REJECT",
    "REASON_STARTUP", "REASON_MASTER_DOWN_TIMER", "REASON_HIGHER_PRIORITY_ADVERT",
    "REASON_PRIORITY_ZERO_ADVERT", "REASON_PREEMPT", "REASON_FAULT",
    "REASON_FAULT_CLEARED", "REASON_SHUTDOWN", "REASON_SYNC_GROUP", "REASON_RELOAD",
]


class State(IntEnum):
    """An instance's state: RFC 5798 6.4 plus keepalived's FAULT (vrrp.h numbering)."""
    INIT = _engine.INIT
    BACKUP = _engine.BACKUP
    MASTER = _engine.MASTER
    FAULT = _engine.FAULT


class Reason(IntEnum):
    """Why the engine changed an instance's state (EV_STATE's detail)."""
    STARTUP = _engine.REASON_STARTUP
    MASTER_DOWN_TIMER = _engine.REASON_MASTER_DOWN_TIMER
    HIGHER_PRIORITY_ADVERT = _engine.REASON_HIGHER_PRIORITY_ADVERT
    PRIORITY_ZERO_ADVERT = _engine.REASON_PRIORITY_ZERO_ADVERT
    PREEMPT = _engine.REASON_PREEMPT
    FAULT = _engine.REASON_FAULT
    FAULT_CLEARED = _engine.REASON_FAULT_CLEARED
    SHUTDOWN = _engine.REASON_SHUTDOWN
    SYNC_GROUP = _engine.REASON_SYNC_GROUP
    RELOAD = _engine.REASON_RELOAD


class EventKind(IntEnum):
    """Event.kind.  Event.code / Event.detail per kind:
    STATE: new state, Reason; RX_LOWER_PRI: their priority, their address;
    REJECT: reject reason (REJECT_NAMES), source address;
    SOCK_REJECT (idx is the socket id): reject reason, source address."""
    STATE = _engine.EV_STATE
    RX_LOWER_PRI = _engine.EV_RX_LOWER_PRI
    REJECT = _engine.EV_REJECT
    SOCK_REJECT = _engine.EV_SOCK_REJECT


# The one table of state names (logs, dumps, metrics, control), indexed by
# the engine's int.
STATE_NAMES: dict[int, str] = {s.value: s.name for s in State}
# Reason words as keepalived-style logs and notify carry them ("master_down_timer").
REASON_NAMES: tuple[str, ...] = tuple(r.name.lower() for r in Reason)
assert [r.value for r in Reason] == list(range(len(Reason))), "REASON_NAMES is indexed by value"

# Module-level names for callers that import them one by one.
INIT, BACKUP, MASTER, FAULT = State
EV_STATE, EV_RX_LOWER_PRI, EV_REJECT, EV_SOCK_REJECT = EventKind
(REASON_STARTUP, REASON_MASTER_DOWN_TIMER, REASON_HIGHER_PRIORITY_ADVERT,
 REASON_PRIORITY_ZERO_ADVERT, REASON_PREEMPT, REASON_FAULT, REASON_FAULT_CLEARED,
 REASON_SHUTDOWN, REASON_SYNC_GROUP, REASON_RELOAD) = Reason
