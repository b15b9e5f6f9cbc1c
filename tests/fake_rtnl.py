"""A stand-in for rtnetlink in unit tests of the VIP exchange
(vrrpd._effects.VipMove): the other end of a datagram socketpair that
answers messages as rtnetlink does, and Effects with dummy VIP messages."""
from __future__ import annotations

import socket
import threading

from vrrpd.net import netlink as nl


def ack(data, hdr, code: int = 0) -> bytes:
    """The kernel's NLMSG_ERROR reply (errno `code`, 0: ACK) to the message at `hdr` in `data`."""
    return (nl.NLMSGHDR.pack(36, nl.NLMSG_ERROR, 0x100, hdr.seq, 0) + nl.ERRCODE.pack(-code)
            + bytes(data[hdr.offset:hdr.offset + nl.NLMSGHDR.size]))


class FakeKernel:
    """The other end of a datagram socketpair standing in for rtnetlink: each
    datagram is a send() of messages; it answers them from a thread (so some
    replies come late) with the errno `codes` gives a message by its
    position: an error always, success only where the message asks for an
    ACK (NLM_F_ACK), as netlink_rcv_skb does.  It never answers those in
    `silent`.  held: no reply goes out until release()."""

    def __init__(self, codes=None, silent=(), held: bool = False):
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.codes, self.silent = codes or {}, set(silent)
        self.sends: list[int] = []          # messages per send()
        self.seqs: list[int] = []
        self.acks_asked: list[int] = []     # sequence numbers of messages with NLM_F_ACK
        self._held: list[bytes] | None = [] if held else None
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while data := self.theirs.recv(1 << 20):
            hdrs = list(nl.headers(data))
            self.sends.append(len(hdrs))
            for h in hdrs:
                pos = len(self.seqs)
                self.seqs.append(h.seq)
                if h.flags & nl.NLM_F_ACK:
                    self.acks_asked.append(h.seq)
                code = self.codes.get(pos, 0)
                if pos not in self.silent and (code or h.flags & nl.NLM_F_ACK):
                    reply = ack(data, h, code)
                    with self._lock:
                        if self._held is None:
                            self.theirs.send(reply)
                        else:
                            self._held.append(reply)

    def release(self, n: int | None = None) -> None:
        """Send the next n replies held (None: all, and stop holding)."""
        with self._lock:
            assert self._held is not None
            out = self._held if n is None else self._held[:n]
            self._held = None if n is None else self._held[n:]
            for reply in out:
                self.theirs.send(reply)

    def fileno(self):
        return self.ours.fileno()

    def close(self):
        self.theirs.shutdown(socket.SHUT_RDWR)      # ends _serve
        self.ours.close()


def vip_effects(nmsgs: list[int], frames=None, names=None):
    """Effects whose instance i adds nmsgs[i] (empty) messages; frames[i]:
    its [(socket slot, frame)] (one round per burst), names[i] its name."""
    from vrrpd._effects import Effects
    e = Effects(len(nmsgs))
    for i, k in enumerate(nmsgs):
        msg = nl.NLMSGHDR.pack(16, nl.RTM_NEWADDR, 0, 0, 0)
        e.set_instance(i, nl_add=msg * k, nl_del=msg * k, nmsgs=k,
                       frames=frames[i] if frames else [], repeat=1,
                       name=b'"%s"' % (names[i] if names else b"VI"))
    return e
