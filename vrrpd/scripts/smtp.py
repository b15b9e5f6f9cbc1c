"""smtp_alert: e-mail on state transitions, sent on the loop with aiosmtplib.

Settings are keepalived's global_defs keywords.  The subject follows
keepalived: "[router_id] VRRP Instance VI_1 - Entering MASTER state" (and
"VRRP Group G1" for sync groups).  Plain SMTP, no TLS or auth, as keepalived.
A failure is logged and counted, never raised; alerts are bounded (a storm
of transitions on a dead mail server must not pile up connections).
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
from dataclasses import dataclass, field
from email.message import EmailMessage

log = logging.getLogger(__name__)

BODIES = {
    "MASTER": "The VRRP {what} {name} is now MASTER: it owns its virtual addresses.",
    "BACKUP": "The VRRP {what} {name} is now BACKUP: it no longer owns its virtual addresses.",
    "FAULT": "The VRRP {what} {name} is now in FAULT state: "
             "it no longer owns its virtual addresses.",
}


@dataclass
class SmtpSettings:
    notification_email: list[str] = field(default_factory=list)
    notification_email_from: str | None = None      # default keepalived@<host name>
    smtp_server: str | None = None
    smtp_port: int = 25                             # `smtp_server HOST [PORT]`
    smtp_connect_timeout: float = 30.0
    smtp_helo_name: str | None = None               # default: host name
    router_id: str | None = None                    # default: host name
    no_email_faults: bool = False


@dataclass
class SmtpCounters:
    sent: int = 0
    failures: int = 0
    dropped: int = 0          # over the backlog bound


class SmtpAlerter:
    MAX_BACKLOG = 100         # alerts waiting or in flight
    MAX_CONCURRENT = 4

    def __init__(self, settings: SmtpSettings):
        self.settings = settings
        self.counters = SmtpCounters()
        host = socket.gethostname()
        self.router_id = settings.router_id or host
        self.sender = settings.notification_email_from or f"keepalived@{host}"
        self.helo = settings.smtp_helo_name or host
        self._tasks: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None

    def message(self, kind: str, name: str, state: str) -> EmailMessage:
        what = "Group" if kind == "GROUP" else "Instance"
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.settings.notification_email)
        msg["Subject"] = f"[{self.router_id}] VRRP {what} {name} - Entering {state} state"
        msg["Date"] = email.utils.formatdate(localtime=True)
        msg["X-Mailer"] = "vrrpd"
        msg.set_content(BODIES[state].format(what=what.lower(), name=name) + "\n")
        return msg

    def alert(self, kind: str, name: str, state: str) -> asyncio.Task | None:
        """Send in the background; returns the task (tests await it) or None if skipped."""
        s = self.settings
        if not s.smtp_server or not s.notification_email or state not in BODIES:
            return None
        if state == "FAULT" and s.no_email_faults:
            return None
        if len(self._tasks) >= self.MAX_BACKLOG:
            self.counters.dropped += 1
            log.warning("smtp_alert backlog full; dropping alert for %s %s", name, state)
            return None
        task = asyncio.get_running_loop().create_task(self.send(self.message(kind, name, state)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def send(self, msg: EmailMessage) -> bool:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.MAX_CONCURRENT)
        s = self.settings
        async with self._slots:
            try:
                import aiosmtplib
                await aiosmtplib.send(msg, hostname=s.smtp_server, port=s.smtp_port,
                                      timeout=s.smtp_connect_timeout, local_hostname=self.helo,
                                      use_tls=False, start_tls=False)
            except Exception as e:      # any failure of a mail server is only logged
                self.counters.failures += 1
                log.error("smtp_alert to %s:%d failed: %s: %s", s.smtp_server, s.smtp_port,
                          type(e).__name__, e)
                return False
        self.counters.sent += 1
        log.info("smtp_alert sent: %s", msg["Subject"])
        return True

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for alerts in flight (shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
