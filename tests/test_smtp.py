"""smtp_alert against a real SMTP server (aiosmtpd on 127.0.0.1) and a dead one."""
import email
import socket

import pytest
from aiosmtpd.controller import Controller

from vrrpd.scripts.notify import Notifier
from vrrpd.scripts.runner import ScriptRunner
from vrrpd.scripts.smtp import SmtpAlerter, SmtpSettings


class Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((session.host_name, envelope.mail_from, list(envelope.rcpt_tos),
                              email.message_from_bytes(envelope.content)))
        return "250 OK"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtpd():
    sink = Sink()
    port = free_port()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    yield sink, port
    ctl.stop()


def settings(port, **kw):
    return SmtpSettings(notification_email=["ops@example.com", "noc@example.com"],
                        notification_email_from="vrrp@example.com", smtp_server="127.0.0.1",
                        smtp_port=port, smtp_connect_timeout=5, smtp_helo_name="lb1.example.com",
                        router_id="LB1", **kw)


def test_alerts_arrive_with_keepalived_headers(aio, smtpd):
    sink, port = smtpd

    async def main():
        smtp = SmtpAlerter(settings(port))
        n = Notifier(ScriptRunner(), smtp=smtp)
        n.notify("INSTANCE", "VI_1", "MASTER", 100, smtp_alert=True)
        n.notify("GROUP", "G1", "BACKUP", 0, smtp_alert=True)
        n.notify("INSTANCE", "VI_2", "MASTER", 100)            # smtp_alert off for it
        await smtp.drain(timeout=10)
        return smtp.counters

    counters = aio(main())
    assert counters.sent == 2 and counters.failures == 0
    subjects = sorted(m["Subject"] for *_, m in sink.messages)
    assert subjects == ["[LB1] VRRP Group G1 - Entering BACKUP state",
                        "[LB1] VRRP Instance VI_1 - Entering MASTER state"]
    for helo, mail_from, rcpts, msg in sink.messages:
        assert helo == "lb1.example.com" and mail_from == "vrrp@example.com"
        assert rcpts == ["ops@example.com", "noc@example.com"]
        assert msg["From"] == "vrrp@example.com" and msg["To"] == "ops@example.com, noc@example.com"
        assert msg["Date"] and msg["X-Mailer"] == "vrrpd"
        name = msg["Subject"].split()[3]
        assert f"VRRP {'group' if name == 'G1' else 'instance'} {name} is now" in msg.get_payload()


def test_no_email_faults(aio, smtpd):
    sink, port = smtpd

    async def main():
        smtp = SmtpAlerter(settings(port, no_email_faults=True))
        assert smtp.alert("INSTANCE", "VI_1", "FAULT") is None
        await smtp.alert("INSTANCE", "VI_1", "BACKUP")

    aio(main())
    assert [m["Subject"] for *_, m in sink.messages] == [
        "[LB1] VRRP Instance VI_1 - Entering BACKUP state"]


def test_dead_server_is_counted_not_raised(aio, caplog):
    async def main():
        smtp = SmtpAlerter(settings(free_port()))
        ok = await smtp.alert("INSTANCE", "VI_1", "MASTER")
        return ok, smtp.counters

    ok, counters = aio(main())
    assert ok is False and counters.failures == 1 and counters.sent == 0
    assert "smtp_alert to 127.0.0.1" in caplog.text


def test_backlog_is_bounded(aio):
    async def main():
        smtp = SmtpAlerter(settings(free_port()))
        smtp.MAX_BACKLOG = 3
        tasks = [smtp.alert("INSTANCE", f"VI_{i}", "MASTER") for i in range(5)]
        await smtp.drain(timeout=10)
        return tasks, smtp.counters

    tasks, counters = aio(main())
    assert tasks[3:] == [None, None] and counters.dropped == 2 and counters.failures == 3
