"""Transitions -> notify scripts, notify fifos (and SMTP): the daemon's hook.

Called by the runtime after a transition's VIPs were added or removed, so a
notify script always sees the state it is told about (keepalived's order).
"""
from __future__ import annotations

import logging

from vrrpd.engine import BACKUP, FAULT, MASTER, STATE_NAMES
from vrrpd.config.model import Command, Config, Fifo
from vrrpd.scripts.notify import Notifier, NotifyFifo, NotifyScripts
from vrrpd.ops.ratelimit import PerKey
from vrrpd.scripts.runner import ScriptRunner

log = logging.getLogger("vrrpd.scripts.notify")

# The states notify scripts and fifo lines report (keepalived has no INIT notify).
STATE_WORDS: dict[int, str] = {s: STATE_NAMES[s] for s in (BACKUP, MASTER, FAULT)}
WORD_BYTES = {w: w.encode() for w in (*STATE_WORDS.values(), "STOP")}
NOTIFY_KEYWORDS = ("notify_master", "notify_backup", "notify_fault", "notify_stop",
                   "notify_deleted", "notify", "notify_master_rx_lower_pri")
NO_SCRIPTS = NotifyScripts()


def _word(new: int, reason: str) -> str | None:
    """The state a notification names (None: INIT, which keepalived does not notify)."""
    return "STOP" if reason == "shutdown" else STATE_WORDS.get(new)


def _scripts_for(scripts: NotifyScripts | None, new: int, reason: str) -> NotifyScripts | None:
    """keepalived 2.2.7 (measured, tests/test_semantics.py): the FAULT an
    instance passes through when a reload gives it new unicast peers starts
    only the generic notify, not notify_fault."""
    if scripts is not None and reason == "reload" and new == FAULT:
        return NotifyScripts(notify=scripts.notify)
    return scripts


class Reporter:
    def __init__(self, config: Config, runner: ScriptRunner, *, build: bool = True):
        """build=False: no instance scripts yet; a reload adds them with build()."""
        g = config.global_defs
        self.config = config
        self.runner = runner
        fifos = [self._fifo(f) for f in (g.notify_fifo, g.vrrp_notify_fifo) if f is not None]
        self.notifier = Notifier(self.runner, fifos, timeout=g.notify_script_timeout,
                                 kill_on_stop=g.notify_script_kill_on_stop)
        self.lower_scripts = PerKey()
        self.scripts: dict[str, NotifyScripts] = {}
        # Instances with a notify script or an SMTP alert: only theirs may
        # need the loop (_loop_scripts); at scale, most have neither.
        self.scripted: set[str] = set()
        self.group_scripts: dict[str, NotifyScripts] = {
            name: NotifyScripts(**{k: self._prepare(getattr(grp, k), f"{k} of group {name}")
                                   for k in NOTIFY_KEYWORDS if hasattr(grp, k)})
            for name, grp in config.sync_groups.items()}
        self.group_smtp = {name: grp.smtp_alert for name, grp in config.sync_groups.items()}
        if build:
            for _ in self.build(config.instances):
                pass

    def build(self, names):
        """The notify scripts of the named instances of self.config, one
        instance per step (a generator: a reload yields to the loop between)."""
        for name in names:
            inst = self.config.instances[name]
            scripts = {k: self._prepare(getattr(inst, k), f"{k} of {name}")
                       for k in NOTIFY_KEYWORDS}
            # Instances without a notify script (most, at scale) share one empty set.
            some = any(scripts.values())
            self.scripts[name] = NotifyScripts(**scripts) if some else NO_SCRIPTS
            if some or inst.smtp_alert:
                self.scripted.add(name)
            else:
                self.scripted.discard(name)
            yield

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
        word = _word(new, reason)
        if word is None:
            return
        self.notifier.notify("INSTANCE", inst.name, word, inst.priority,
                             _scripts_for(self.scripts.get(inst.name), new, reason),
                             smtp_alert=inst.spec.conf.smtp_alert)

    def _loop_scripts(self, inst, word: str, new: int, reason: str) -> NotifyScripts | None:
        """The scripts of a notification that needs the loop: a script or an
        SMTP alert goes with it (started before the fifo line, keepalived's
        order); None: it is its fifo line alone."""
        if inst.name not in self.scripted:
            return None             # most instances at scale: a fifo line alone
        smtp = inst.spec.conf.smtp_alert
        s = _scripts_for(self.scripts.get(inst.name), new, reason) or NO_SCRIPTS
        if smtp or s.notify is not None or s.for_state(word) is not None:
            return s
        return None

    def thread_lines(self, chunk):
        """The chunk's fifo lines for the netlink thread to write right after
        each instance's VIPs (vrrpd._effects.Followup): -> (words, priorities,
        fifo gates), or None when an instance's notification needs the loop."""
        words, priorities = [], []
        scripted = self.scripted
        for inst, _, new, reason in chunk:
            word = _word(new, reason)
            if word is None or inst.name in scripted and \
                    self._loop_scripts(inst, word, new, reason) is not None:
                return None
            words.append(WORD_BYTES[word])
            priorities.append(inst.priority)
        return words, priorities, [f.gate for f in self.notifier.fifos if f.gate is not None]

    def on_transitions(self, chunk, effects, followup=None) -> None:
        """A chunk of (inst, old, new, reason), in order: per instance its
        scripts are started before its fifo line goes out (keepalived's
        order); the chunk's lines are formatted by `effects` (vrrpd._effects)
        and written together.  followup: the netlink thread wrote the lines
        (thread_lines); only what it left is written here."""
        if followup is not None:
            for f in self.notifier.fifos:
                f.take(followup)
            return
        notify = self.notifier.notify
        idxs, words, priorities = [], [], []
        for inst, _, new, reason in chunk:
            word = _word(new, reason)
            if word is None:
                continue
            idxs.append(inst.idx)
            words.append(WORD_BYTES[word])
            priorities.append(inst.priority)
            if (s := self._loop_scripts(inst, word, new, reason)) is not None:
                notify("INSTANCE", inst.name, word, inst.priority, s,
                       smtp_alert=inst.spec.conf.smtp_alert, fifo=False)
        if self.notifier.fifos and idxs:
            blocks = effects.fifo_lines(idxs, words, priorities)
            for f in self.notifier.fifos:
                f.write_blocks(blocks)

    def on_group_transition(self, group: str, state: int | None) -> None:
        """state None: the daemon is stopping (GROUP ... STOP 0 after the members)."""
        word = "STOP" if state is None else STATE_WORDS.get(state)
        if word is None:
            return
        self.notifier.notify("GROUP", group, word, 0, self.group_scripts.get(group),
                             smtp_alert=self.group_smtp.get(group, False))

    def on_removed(self, inst, scripts: NotifyScripts | None) -> None:
        """A reload removed the instance (after its priority 0 and its VIPs went).
        keepalived 2.2.7, measured (tests/test_reload_notify.py): DELETED with
        `notify_deleted`, else FAULT -- and nothing at all for an instance
        already in FAULT; notify_deleted's script if it has one, then the
        generic notify with the effective priority, then the fifo line.
        notify_fault does not run and no sync group line follows.  No SMTP
        alert: keepalived's SMTP notifier has no case for a deleted instance
        (read in its source, not measured)."""
        deleted = inst.spec.conf.notify_deleted_enabled
        if not deleted and inst.state == FAULT:
            return
        if scripts is not None:
            scripts = NotifyScripts(notify_deleted=scripts.notify_deleted, notify=scripts.notify)
        self.notifier.notify("INSTANCE", inst.name, "DELETED" if deleted else "FAULT",
                             inst.priority, scripts)

    def on_rx_lower_pri(self, inst, priority: int) -> None:
        """keepalived runs notify_master_rx_lower_pri for every such advert; a
        storm of them would start thousands of processes, so it runs at most
        once per advert interval per instance (the skipped runs are counted
        in the script counters' `suppressed`).  The fifo line is written for each."""
        scripts = self.scripts.get(inst.name)
        if scripts is not None and scripts.notify_master_rx_lower_pri is not None and \
                not self.lower_scripts.allow(inst.name, inst.spec.advert_int_cs / 100):
            self.runner.counters.suppressed += 1
            scripts = None
        self.notifier.master_rx_lower_pri(inst.name, inst.priority, scripts)

    async def on_stop(self, daemon) -> None:
        await self.notifier.shutdown()
        await self.runner.terminate_all()
