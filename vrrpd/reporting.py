"""Transitions -> notify scripts, notify fifos (and SMTP): the daemon's hook.

Called by the runtime after a transition's VIPs were added or removed, so a
notify script always sees the state it is told about (keepalived's order).
"""
from __future__ import annotations

import logging

from . import _engine
from .config.model import Command, Config, Fifo
from .notify import Notifier, NotifyFifo, NotifyScripts
from .scripts import ScriptRunner

log = logging.getLogger("vrrpd.notify")

STATE_WORDS = {_engine.BACKUP: "BACKUP", _engine.MASTER: "MASTER", _engine.FAULT: "FAULT"}
NOTIFY_KEYWORDS = ("notify_master", "notify_backup", "notify_fault", "notify_stop",
                   "notify_deleted", "notify", "notify_master_rx_lower_pri")


class Reporter:
    def __init__(self, config: Config):
        g = config.global_defs
        self.runner = ScriptRunner(script_user=g.script_user, script_group=g.script_group,
                                   enable_script_security=g.enable_script_security)
        fifos = [self._fifo(f) for f in (g.notify_fifo, g.vrrp_notify_fifo) if f is not None]
        self.notifier = Notifier(self.runner, fifos)
        self.scripts: dict[str, NotifyScripts] = {
            name: NotifyScripts(**{k: self._prepare(getattr(inst, k), f"{k} of {name}")
                                   for k in NOTIFY_KEYWORDS})
            for name, inst in config.instances.items()}

    def _prepare(self, cmd: Command | None, label: str):
        if cmd is None:
            return None
        return self.runner.prepare(list(cmd.argv), cmd.user, cmd.group, label=label)

    def _fifo(self, f: Fifo) -> NotifyFifo:
        script = self._prepare(f.script, f"fifo script of {f.path}")
        return NotifyFifo(f.path, script)

    def open(self) -> None:
        self.notifier.open()

    # -- runtime hooks ---------------------------------------------------------------
    def on_transition(self, inst, old: int, new: int, reason: str) -> None:
        word = "STOP" if reason == "shutdown" else STATE_WORDS.get(new)
        if word is None:
            return
        self.notifier.notify("INSTANCE", inst.name, word, inst.priority,
                             self.scripts.get(inst.name), smtp_alert=inst.spec.conf.smtp_alert)

    def on_rx_lower_pri(self, inst, priority: int) -> None:
        self.notifier.master_rx_lower_pri(inst.name, inst.priority, self.scripts.get(inst.name))

    async def on_stop(self, daemon) -> None:
        await self.notifier.shutdown()
        await self.runner.terminate_all()
