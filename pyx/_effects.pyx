# Transition side effects in batch: VIP rtnetlink messages, GARP/NA frames,
# notify-fifo lines (vrrpd/_effects.pxd describes the layout).
#
# keepalived does this work per instance at each transition (vrrp.c
# vrrp_state_become_master: netlink per VIP, vrrp_send_link_update per VIP);
# here every instance's bytes are built once, and a batch of instances costs
# a copy into one buffer for rtnetlink, one sendmmsg() per socket for the
# announcements and one string of fifo lines.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memset
from libc.errno cimport errno, EINTR, EAGAIN, ENOBUFS, EEXIST, EADDRNOTAVAIL, ETIMEDOUT
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
cimport cython

from vrrpd._sys cimport iovec, msghdr, mmsghdr, sendmmsg, MSG_DONTWAIT

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int, const void*, size_t, int)
    ssize_t recv(int, void*, size_t, int)

cdef extern from "<unistd.h>" nogil:
    ssize_t write(int, const void*, size_t)

cdef extern from *:
    """
    static inline int vrrpd_load(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void vrrpd_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline int vrrpd_add(int *p, int v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
    """
    int vrrpd_load(int*) nogil
    void vrrpd_store(int*, int) nogil
    int vrrpd_add(int*, int) nogil

cdef extern from "<poll.h>" nogil:
    cdef struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd*, unsigned long, int)
    enum:
        POLLIN

cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int, timespec*)
    enum:
        CLOCK_MONOTONIC
        CLOCK_THREAD_CPUTIME_ID

cdef enum:
    NLMSG_HDRLEN = 16
    NLMSG_ERROR = 2
    NLM_F_ACK = 4
    FRAME_HDR = 4           # u16 length, u16 socket slot before each frame
    TX_BATCH = 1024
    PIPE_BUF = 4096         # a pipe write up to this size lands whole (pipe(7))
    RECV_BUF = 1 << 16      # rtnetlink replies read per recv()
    # A move's first send: its first instances' ACKs (so their GARPs and
    # notify lines) come back after a few messages' work, not a whole piece's.
    FIRST_PIECE = 8

cdef inline uint32_t _u32(const uint8_t* p) noexcept nogil:
    return (<const uint32_t*>p)[0]


cdef inline uint16_t _u16(const uint8_t* p) noexcept nogil:
    return (<const uint16_t*>p)[0]


cdef uint8_t* _copy(bytes data, uint32_t* length) except? NULL:
    cdef Py_ssize_t n = len(data)
    length[0] = <uint32_t>n
    if n == 0:
        return NULL
    cdef uint8_t* buf = <uint8_t*>malloc(n)
    if buf == NULL:
        raise MemoryError()
    memcpy(buf, PyBytes_AS_STRING(data), n)
    return buf


cdef class Effects:
    """Prebuilt side effects per instance index, and batch operations on them."""

    def __cinit__(self, int max_instances):
        self._max = max_instances
        self._pb = <prebuilt_t*>calloc(max_instances, sizeof(prebuilt_t))
        self._fds = NULL
        self._nfds = 0
        if self._pb == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        if self._pb != NULL:
            for i in range(self._max):
                free(self._pb[i].nl_add)
                free(self._pb[i].nl_del)
                free(self._pb[i].frames)
                free(self._pb[i].name)
            free(self._pb)
        free(self._fds)

    cdef prebuilt_t* _get(self, int idx) except NULL:
        if idx < 0 or idx >= self._max:
            raise IndexError(f"instance index {idx} out of range")
        return &self._pb[idx]

    # --- what is prebuilt -------------------------------------------------
    def set_socket(self, int slot, int fd):
        """Announcement frames naming `slot` go out on packet socket `fd`
        (bound to its interface); fd -1 drops them (counted as errors)."""
        cdef int* fds
        cdef int i
        if slot < 0:
            raise ValueError("negative socket slot")
        if slot >= self._nfds:
            fds = <int*>realloc(self._fds, (slot + 1) * sizeof(int))
            if fds == NULL:
                raise MemoryError()
            for i in range(self._nfds, slot + 1):
                fds[i] = -1
            self._fds = fds
            self._nfds = slot + 1
        self._fds[slot] = fd

    def set_instance(self, int idx, *, bytes nl_add, bytes nl_del, int nmsgs,
                     list frames, int repeat, bytes name):
        """The instance's bytes: its VIPs' add/remove messages (nmsgs each,
        sequence numbers patched per batch), its announcement frames as
        [(socket slot, frame)] sent `repeat` rounds per burst, and its quoted
        name for fifo lines.  Keeps whether its VIPs are on."""
        cdef prebuilt_t* p = self._get(idx)
        cdef uint32_t n = 0
        cdef uint8_t* buf
        cdef int slot
        cdef bytes frame
        for slot, frame in frames:
            if len(frame) > 0xffff or not 0 <= slot <= 0xffff:
                raise ValueError("frame too long or bad socket slot")
            n += FRAME_HDR + len(frame)
        buf = <uint8_t*>malloc(n) if n else NULL
        if n and buf == NULL:
            raise MemoryError()
        n = 0
        for slot, frame in frames:
            (<uint16_t*>(buf + n))[0] = <uint16_t>len(frame)
            (<uint16_t*>(buf + n))[1] = <uint16_t>slot
            memcpy(buf + n + FRAME_HDR, PyBytes_AS_STRING(frame), len(frame))
            n += FRAME_HDR + len(frame)
        free(p.frames)
        p.frames, p.frames_len, p.nframes = buf, n, len(frames)
        free(p.nl_add)
        free(p.nl_del)
        free(p.name)
        p.nl_add = p.nl_del = p.name = NULL
        p.nl_add = _copy(nl_add, &p.nl_add_len)
        p.nl_del = _copy(nl_del, &p.nl_del_len)
        p.name = _copy(name, &p.name_len)
        p.nmsgs = nmsgs
        p.repeat = repeat if repeat > 0 else 0

    def clear(self, int idx):
        """The slot's instance is gone: nothing prebuilt, VIPs not ours."""
        cdef prebuilt_t* p = self._get(idx)
        free(p.nl_add)
        free(p.nl_del)
        free(p.frames)
        free(p.name)
        memset(p, 0, sizeof(prebuilt_t))

    def chunk_ends(self, list idxs, int per_send, int sends, int max_sends, int max_insts):
        """Where a run of instances' VIP moves ends its chunks: the first
        worth `sends` netlink sends of per_send messages (or sends *
        max_insts instances), each next one twice the last, up to max_sends.
        -> (end positions, the sends the last whole chunk reached)."""
        cdef list ends = []
        cdef int i, n = len(idxs), start = 0
        cdef long msgs = 0
        for i in range(n):
            msgs += self._get(<int>idxs[i]).nmsgs
            if msgs >= <long>sends * per_send or i + 1 - start >= sends * max_insts:
                ends.append(i + 1)
                start, msgs = i + 1, 0
                sends = min(2 * sends, max_sends)
        if start < n:
            ends.append(n)
        return ends, sends

    def vips_on(self, int idx):
        return bool(self._get(idx).vips_on)

    def gens(self, list idxs):
        """Each instance's gen (see bump)."""
        cdef int idx
        return [self._get(idx).gen for idx in idxs]

    def bump(self, list idxs):
        """The instances entered or left MASTER: bursts scheduled before are void."""
        cdef int idx
        for idx in idxs:
            self._get(idx).gen += 1

    # --- rtnetlink ----------------------------------------------------------
    def vip_move(self, list idxs, bint add, bint announce=False, list words=None,
                 list priorities=None, list gates=None):
        """-> a VipMove of every instance's add (or remove) messages, copied
        now: the sender thread's exchange() then needs nothing of this object.
        announce: it sends each instance's first GARP/NA burst after its VIPs;
        words, priorities, gates (FifoGate): and then writes its fifo line
        (`INSTANCE "name" word priority`) to each gate."""
        cdef int idx, pos = 0, k = 0
        cdef uint32_t i, total = 0, off = 0, mlen
        cdef prebuilt_t* p
        for idx in idxs:
            p = self._get(idx)
            total += p.nl_add_len if add else p.nl_del_len
            k += p.nmsgs
        cdef VipMove move = VipMove.__new__(VipMove)
        move.idxs, move.add = list(idxs), add
        move._alloc(total, k)
        cdef const uint8_t* src
        k = 0
        for idx in idxs:
            p = &self._pb[idx]
            src = p.nl_add if add else p.nl_del
            mlen = p.nl_add_len if add else p.nl_del_len
            memcpy(move._buf + off, src, mlen)
            i = 0
            while i < mlen:
                move._off[k] = off + i
                move._owner[k] = pos
                k += 1
                i += _u32(src + i)
            off += mlen
            pos += 1
        move._off[k] = off
        if announce or words is not None:
            move.followup = Followup.__new__(Followup)
            move.followup._build(self, idxs, move, announce, words, priorities, gates or [])
        return move

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def finish(self, VipMove move):
        """After move.exchange(): its instances' VIPs are on (off), and ->
        [(position in move.idxs, errno)] for those one of whose messages
        failed (first errno; no ACK counts as ETIMEDOUT).  EEXIST on add and
        EADDRNOTAVAIL on remove are not failures."""
        cdef int k, pos, idx, code, harmless = EEXIST if move.add else EADDRNOTAVAIL
        cdef list failed = []
        cdef int last = -1
        for k in range(move.count):
            code = move._err[k]
            if code < 0:
                code = ETIMEDOUT
            pos = move._owner[k]
            if code != 0 and code != harmless and pos != last:
                failed.append((pos, code))
                last = pos
        for idx in move.idxs:
            self._get(idx).vips_on = move.add
        cdef Followup fu = move.followup
        if fu is not None:
            self._sent += fu._sent
            self._deferred += fu._deferred
            self._errors += fu._errors
        return failed

    # --- announcements --------------------------------------------------------
    def announce(self, list idxs, list gens=None):
        """One burst per instance (`repeat` rounds over its frames), one
        sendmmsg() per run of frames on one socket.  gens: only instances
        whose gen still equals it (a delayed burst).  -> [(slot, frame)] a
        full device queue or socket buffer refused, in order, to retry."""
        if gens is not None:
            idxs = [idx for idx, gen in zip(idxs, gens) if self._get(idx).gen == <uint32_t>gen]
        cdef Followup burst = Followup.__new__(Followup)
        burst._build(self, idxs, None, True, None, None, None)
        with nogil:         # the netlink sender thread runs on meanwhile
            burst._announce(0, burst._n)
        self._sent += burst._sent
        self._deferred += burst._deferred
        self._errors += burst._errors
        return burst.deferred()

    def stats(self):
        return {"announce_sent": self._sent, "announce_deferred": self._deferred,
                "announce_errors": self._errors}

    # --- notify fifo ------------------------------------------------------------
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def fifo_lines(self, list idxs, list words, list priorities):
        """keepalived's fifo line per instance (_format_lines), in blocks of
        whole lines of at most PIPE_BUF bytes (such a write never tears a line)."""
        cdef int n = len(idxs), pos, start = 0
        cdef list blocks = []
        cdef uint8_t* lines = NULL
        cdef uint32_t* off = <uint32_t*>malloc((n + 1) * sizeof(uint32_t))
        if off == NULL:
            raise MemoryError()
        try:
            lines = _format_lines(self, idxs, words, priorities, off)
            for pos in range(n):
                if pos > start and off[pos + 1] - off[start] > PIPE_BUF:
                    blocks.append(PyBytes_FromStringAndSize(<char*>lines + off[start],
                                                            off[pos] - off[start]))
                    start = pos
            if n > start:
                blocks.append(PyBytes_FromStringAndSize(<char*>lines + off[start],
                                                        off[n] - off[start]))
        finally:
            free(lines)
            free(off)
        return blocks


cdef uint8_t* _format_lines(Effects fx, list idxs, list words, list priorities,
                            uint32_t* off) except NULL:
    """keepalived's `INSTANCE "VI_1" MASTER 100\n` per instance, one after
    another in a buffer the caller frees; off (n + 1 entries) gets where each
    starts and, last, the end."""
    cdef int n = len(idxs), pos
    cdef uint32_t total = 0, at = 0, size
    cdef prebuilt_t* p
    cdef uint8_t* out
    if len(words) != n or len(priorities) != n:
        raise ValueError("one word and one priority per instance")
    for pos in range(n):        # the priority: a sign and up to 10 digits
        total += 9 + fx._get(idxs[pos]).name_len + 1 + len(<bytes>words[pos]) + 13
    out = <uint8_t*>malloc(total if total else 1)
    if out == NULL:
        raise MemoryError()
    for pos in range(n):
        p = fx._get(idxs[pos])
        off[pos] = at
        memcpy(out + at, b"INSTANCE ", 9)
        at += 9
        memcpy(out + at, p.name, p.name_len)
        at += p.name_len
        out[at] = b' '
        at += 1
        size = len(<bytes>words[pos])
        memcpy(out + at, PyBytes_AS_STRING(words[pos]), size)
        at += size
        out[at] = b' '
        at += 1
        _put_uint(out, &at, <long>priorities[pos])
        out[at] = b'\n'
        at += 1
    off[n] = at
    return out


cdef inline double _clock(int clock) noexcept nogil:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _now() noexcept nogil:
    return _clock(CLOCK_MONOTONIC)


@cython.final
cdef class VipMove:
    """One batch of VIP messages and its replies, for the netlink sender
    thread: exchange() numbers, sends and collects the ACKs without the GIL,
    so the loop runs on while the kernel adds (removes) the VIPs.

    Only the last message of each send asks for an ACK: rtnetlink handles a
    send's messages in order and answers every failed one whatever its
    flags (netlink_rcv_skb), so that ACK stands for the messages before it
    that no error came back for.  A takeover of 10,000 VIPs then reads a
    few dozen replies rather than 10,000, each its own skb and recv()."""

    def __dealloc__(self):
        free(self._buf)
        free(self._off)
        free(self._owner)
        free(self._err)

    cdef int _alloc(self, uint32_t length, int count) except -1:
        self._buf = <uint8_t*>malloc(length if length else 1)
        self._off = <uint32_t*>malloc((count + 1) * sizeof(uint32_t))
        self._owner = <int32_t*>malloc((count if count else 1) * sizeof(int32_t))
        self._err = <int32_t*>malloc((count if count else 1) * sizeof(int32_t))
        if self._buf == NULL or self._off == NULL or self._owner == NULL or self._err == NULL:
            raise MemoryError()
        cdef int k
        self.count = count
        self.acked = 0
        for k in range(count):
            self._err[k] = -1
        return 0

    def exchange(self, int fd, uint32_t seq0, int piece, double timeout, bint first_small=True):
        """Number the messages seq0.., send them `piece` per send() (the
        first send at most FIRST_PIECE if first_small) on the rtnetlink socket fd
        (non-blocking) and record each one's errno from the replies (an
        error's, or the send's closing ACK), reading them after each send so
        its socket buffer never overruns; then wait up to `timeout` for late
        ones.  The followup, if any, runs as each instance's messages are
        answered.  -> (this thread's CPU seconds in send(), errno of a send
        the kernel refused or of lost replies, else 0).  Only what was not
        sent is marked with the refusal's errno."""
        cdef int k = 0, k1, n, r, fail = 0, overrun = 0
        cdef double spent = 0.0, t0, deadline
        cdef uint8_t* rbuf = <uint8_t*>malloc(RECV_BUF)
        cdef pollfd pfd
        cdef Followup fu = self.followup
        if rbuf == NULL:
            raise MemoryError()
        if piece < 1:
            piece = 1
        with nogil:
            for k in range(self.count):
                (<uint32_t*>(self._buf + self._off[k] + 8))[0] = seq0 + k
                self._flags(k)[0] &= ~NLM_F_ACK
            k = 0
            while k < self.count and not fail:
                n = FIRST_PIECE if k == 0 and first_small and piece > FIRST_PIECE else piece
                k1 = k + n if k + n < self.count else self.count
                self._flags(k1 - 1)[0] |= NLM_F_ACK
                t0 = _clock(CLOCK_THREAD_CPUTIME_ID)
                r = send(fd, self._buf + self._off[k], self._off[k1] - self._off[k], 0)
                spent += _clock(CLOCK_THREAD_CPUTIME_ID) - t0
                if r < 0:
                    if errno == EINTR:
                        continue
                    fail = errno
                    while k < self.count:
                        self._err[k] = fail
                        k += 1
                    break
                k = k1
                overrun = self._drain(fd, rbuf, seq0)
                if fu is not None:
                    fu.run(self._err, k, False)
            deadline = _now() + timeout
            while self.acked < self.count and not overrun:
                if self._missing_sent() == 0:
                    break
                pfd.fd, pfd.events, pfd.revents = fd, POLLIN, 0
                r = poll(&pfd, 1, <int>((deadline - _now()) * 1000) + 1)
                if r < 0 and errno == EINTR:
                    continue
                if r <= 0 or _now() > deadline:
                    break
                overrun = self._drain(fd, rbuf, seq0)
                if fu is not None:
                    fu.run(self._err, k, False)
            if fu is not None:
                fu.run(self._err, self.count, True)
        free(rbuf)
        return spent, fail or overrun

    cdef int _missing_sent(self) noexcept nogil:
        """Messages sent that have no ACK yet (a refused send's are marked)."""
        cdef int k, n = 0
        for k in range(self.count):
            if self._err[k] < 0:
                n += 1
        return n

    cdef uint16_t* _flags(self, int k) noexcept nogil:
        return <uint16_t*>(self._buf + self._off[k] + 6)

    cdef int _drain(self, int fd, uint8_t* rbuf, uint32_t seq0) noexcept nogil:
        """Read every reply queued, recording errnos (a send's closing ACK:
        its other messages without an error succeeded); -> ENOBUFS if the
        socket lost some (they never come), else 0."""
        cdef ssize_t n
        cdef size_t off
        cdef uint32_t mlen, k
        cdef int j
        while True:
            n = recv(fd, rbuf, RECV_BUF, MSG_DONTWAIT)
            if n < 0:
                if errno == EINTR:
                    continue
                return ENOBUFS if errno == ENOBUFS else 0
            if n == 0:
                return 0
            off = 0
            while off + NLMSG_HDRLEN <= <size_t>n:
                mlen = _u32(rbuf + off)
                if mlen < NLMSG_HDRLEN or off + mlen > <size_t>n:
                    break
                k = _u32(rbuf + off + 8) - seq0
                if _u16(rbuf + off + 4) == NLMSG_ERROR and k < <uint32_t>self.count \
                        and mlen >= NLMSG_HDRLEN + 4 and self._err[k] < 0:
                    self._err[k] = -(<const int32_t*>(rbuf + off + NLMSG_HDRLEN))[0]
                    self.acked += 1
                    if self._flags(k)[0] & NLM_F_ACK:
                        j = <int>k - 1
                        while j >= 0 and not self._flags(j)[0] & NLM_F_ACK:
                            if self._err[j] < 0:
                                self._err[j] = 0
                                self.acked += 1
                            j -= 1
                off += (mlen + 3) & ~3


@cython.final
cdef class FifoGate:
    """A notify fifo as the netlink sender thread sees it.  The thread writes
    a takeover's lines there itself only while the loop's writer has nothing
    queued (blocked) and no earlier move left lines for the loop to write
    (owed): lines keep transition order, and a slow reader costs the thread
    nothing (what it cannot write at once is the loop's to queue)."""

    def __cinit__(self, int fd):
        self._fd = fd

    def set_blocked(self, bint blocked):
        """The loop's writer has lines queued (True) or none (False)."""
        vrrpd_store(&self._blocked, blocked)

    def settle(self):
        """The loop wrote (or queued) the lines a move left it."""
        vrrpd_add(&self._owed, -1)

    def close(self):
        vrrpd_store(&self._fd, -1)

    @property
    def owed(self):
        return vrrpd_load(&self._owed)


cdef void _put_uint(uint8_t* out, uint32_t* at, long value) noexcept:
    """`value` in decimal at out[at], advancing at."""
    cdef char digits[24]
    cdef int n = 0
    if value < 0:
        out[at[0]] = b'-'
        at[0] += 1
        value = -value
    while True:
        digits[n] = <char>(48 + value % 10)
        n += 1
        value //= 10
        if value == 0:
            break
    while n:
        n -= 1
        out[at[0]] = <uint8_t>digits[n]
        at[0] += 1


@cython.final
cdef class Followup:
    """A VipMove's follow-up in the sender thread: as soon as an instance's
    VIP messages are ACKed, its first GARP/NA burst (keepalived sends them
    after the VIPs) and then its notify-fifo line (after the announcements).
    Its instances have no notify script and no SMTP alert for the state, so
    nothing of theirs must start before the line; the loop still does the
    rest of their report (later bursts, sync-group lines, counters) and
    writes what a fifo could not take at once."""

    def __dealloc__(self):
        free(self._msg_end)
        free(self._frames)
        free(self._fr_off)
        free(self._repeat)
        free(self._fds)
        free(self._refused)
        free(self._left)
        free(self._lines)
        free(self._ln_off)
        free(self._gate_fd)
        free(self._gate_blocked)
        free(self._gate_owed)
        free(self._gate_from)
        free(self._gate_lines)
        free(self._gate_errors)

    cdef _build(self, Effects fx, list idxs, VipMove move, bint announce, list words,
                list priorities, list gates):
        """Copies of the instances' frames (announce) and lines (words...);
        move None: no VIP messages to wait for."""
        cdef int n = len(idxs), pos, k = 0, g
        cdef uint32_t total = 0, at = 0
        cdef prebuilt_t* p
        cdef FifoGate gate
        self._n = n
        self._msg_end = <uint32_t*>malloc((n + 1) * sizeof(uint32_t))
        self._fr_off = <uint32_t*>calloc(n + 1, sizeof(uint32_t))
        self._repeat = <uint32_t*>calloc(n + 1, sizeof(uint32_t))
        self._ln_off = <uint32_t*>calloc(n + 1, sizeof(uint32_t))
        if self._msg_end == NULL or self._fr_off == NULL or self._repeat == NULL \
                or self._ln_off == NULL:
            raise MemoryError()
        for pos in range(n):
            while move is not None and k < move.count and move._owner[k] == pos:
                k += 1
            self._msg_end[pos] = k
        if announce:
            for pos in range(n):
                total += fx._get(idxs[pos]).frames_len
            self._frames = <uint8_t*>malloc(total if total else 1)
            self._nfds = fx._nfds
            self._fds = <int*>malloc((fx._nfds if fx._nfds else 1) * sizeof(int))
            self._refused = <uint8_t*>calloc(fx._nfds if fx._nfds else 1, 1)
            if self._frames == NULL or self._fds == NULL or self._refused == NULL:
                raise MemoryError()
            if fx._nfds:
                memcpy(self._fds, fx._fds, fx._nfds * sizeof(int))
            for pos in range(n):
                p = fx._get(idxs[pos])
                if p.frames_len:
                    memcpy(self._frames + at, p.frames, p.frames_len)
                self._fr_off[pos] = at
                self._repeat[pos] = p.repeat
                at += p.frames_len
            self._fr_off[n] = at
        if words is None:
            return
        self._lines = _format_lines(fx, idxs, words, priorities, self._ln_off)
        self._gates = list(gates)
        self._ngates = g = len(gates)
        self._gate_fd = <int**>malloc((g if g else 1) * sizeof(int*))
        self._gate_blocked = <int**>malloc((g if g else 1) * sizeof(int*))
        self._gate_owed = <int**>malloc((g if g else 1) * sizeof(int*))
        self._gate_from = <int*>malloc((g if g else 1) * sizeof(int))
        self._gate_lines = <int*>calloc(g if g else 1, sizeof(int))
        self._gate_errors = <int*>calloc(g if g else 1, sizeof(int))
        if self._gate_fd == NULL or self._gate_blocked == NULL or self._gate_owed == NULL \
                or self._gate_from == NULL or self._gate_lines == NULL \
                or self._gate_errors == NULL:
            raise MemoryError()
        for k in range(g):
            gate = <FifoGate?>gates[k]
            self._gate_fd[k] = &gate._fd
            self._gate_blocked[k] = &gate._blocked
            self._gate_owed[k] = &gate._owed
            self._gate_from[k] = -1
        for pos in range(n):            # a line longer than PIPE_BUF could tear: the loop's
            if self._ln_off[pos + 1] - self._ln_off[pos] > PIPE_BUF:
                self._long_lines = True
                break

    cdef int run(self, const int32_t* err, int upto, bint final) noexcept nogil:
        """The instances whose messages (below `upto`) all have their ACK, in
        order (final: all the rest, as the loop reports a failed one too)."""
        cdef int a = self._ready, b = self._ready
        cdef uint32_t k
        while b < self._n:
            if not final:
                if self._msg_end[b] > <uint32_t>upto:
                    break
                k = self._msg_end[b - 1] if b else 0
                while k < self._msg_end[b] and err[k] >= 0:
                    k += 1
                if k < self._msg_end[b]:
                    break
            b += 1
        if b > a:
            if self._frames != NULL:
                self._announce(a, b)
            if self._lines != NULL:
                self._report(a, b)
            self._ready = b
        return 0

    cdef int _announce(self, int a, int b) noexcept nogil:
        """Effects.announce for positions a..b, refused frames kept for the loop."""
        cdef mmsghdr msgs[TX_BATCH]
        cdef iovec iov[TX_BATCH]
        cdef int pos, slot, cur = -1, m = 0
        cdef uint32_t off, rnd
        cdef const uint8_t* f
        for pos in range(a, b):
            for rnd in range(self._repeat[pos]):
                off = self._fr_off[pos]
                while off < self._fr_off[pos + 1]:
                    f = self._frames + off
                    slot = _u16(f + 2)
                    if slot != cur or m == TX_BATCH:
                        self._send(msgs, iov, m, cur)
                        m, cur = 0, slot
                    iov[m].iov_base = <void*>(f + FRAME_HDR)
                    iov[m].iov_len = _u16(f)
                    m += 1
                    off += FRAME_HDR + _u16(f)
        self._send(msgs, iov, m, cur)
        return 0

    cdef int _send(self, mmsghdr* msgs, iovec* iov, int m, int slot) noexcept nogil:
        cdef int k = 0, r, fd
        if m == 0:
            return 0
        fd = self._fds[slot] if 0 <= slot < self._nfds else -1
        if fd < 0:
            self._errors += m
            return 0
        if self._refused[slot]:             # keep order behind what this socket refused
            for k in range(m):
                self._keep(<const uint8_t*>iov[k].iov_base, <int>iov[k].iov_len, slot)
            return 0
        memset(msgs, 0, m * sizeof(mmsghdr))
        for k in range(m):
            msgs[k].msg_hdr.msg_iov = &iov[k]
            msgs[k].msg_hdr.msg_iovlen = 1
        k = 0
        while k < m:
            r = sendmmsg(fd, msgs + k, m - k, MSG_DONTWAIT)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN or errno == ENOBUFS:
                    self._refused[slot] = 1
                    while k < m:
                        self._keep(<const uint8_t*>iov[k].iov_base, <int>iov[k].iov_len, slot)
                        k += 1
                    return 0
                self._errors += 1           # e.g. the link went down: skip this frame
                k += 1
            else:
                self._sent += r
                k += r
        return 0

    cdef int _keep(self, const uint8_t* frame, int length, int slot) noexcept nogil:
        """A refused frame, for the loop's GARP scheduler to resend."""
        cdef uint32_t need = self._left_len + FRAME_HDR + length
        cdef uint8_t* grown
        if need > self._left_cap:
            grown = <uint8_t*>realloc(self._left, need * 2)
            if grown == NULL:
                self._errors += 1
                return 0
            self._left, self._left_cap = grown, need * 2
        (<uint16_t*>(self._left + self._left_len))[0] = <uint16_t>length
        (<uint16_t*>(self._left + self._left_len))[1] = <uint16_t>slot
        memcpy(self._left + self._left_len + FRAME_HDR, frame, length)
        self._left_len = need
        self._deferred += 1
        return 0

    cdef int _block_end(self, int s, int b) noexcept nogil:
        """-> e: lines s..e-1 (e <= b, at least one) are one write of at most
        PIPE_BUF bytes, unless line s alone is longer."""
        cdef int e = s + 1
        while e < b and self._ln_off[e + 1] - self._ln_off[s] <= PIPE_BUF:
            e += 1
        return e

    cdef int _report(self, int a, int b) noexcept nogil:
        """Positions a..b's lines to each gate, in writes of whole lines of at
        most PIPE_BUF bytes (such a pipe write lands whole or not at all)."""
        cdef int g, s, e, fd
        cdef ssize_t r
        for g in range(self._ngates):
            if self._gate_from[g] >= 0:
                continue                    # the loop writes this gate's lines from there
            fd = vrrpd_load(self._gate_fd[g])
            if fd < 0:
                continue
            if self._long_lines or vrrpd_load(self._gate_blocked[g]) \
                    or vrrpd_load(self._gate_owed[g]):
                self._gate_from[g] = a
                vrrpd_add(self._gate_owed[g], 1)
                continue
            s = a
            while s < b:
                e = self._block_end(s, b)
                r = write(fd, self._lines + self._ln_off[s], self._ln_off[e] - self._ln_off[s])
                if r < 0 and errno == EINTR:
                    continue
                if r < 0 and errno == EAGAIN:   # the reader is behind
                    self._gate_from[g] = s
                    vrrpd_add(self._gate_owed[g], 1)
                    break
                if r < 0:
                    self._gate_errors[g] += 1
                else:
                    self._gate_lines[g] += e - s
                s = e
        return 0

    # --- for the loop, after the exchange --------------------------------------------
    def deferred(self):
        """-> [(socket slot, frame)] the device queues refused, in order."""
        cdef list out = []
        cdef uint32_t off = 0
        while off < self._left_len:
            out.append((_u16(self._left + off + 2), PyBytes_FromStringAndSize(
                <char*>self._left + off + FRAME_HDR, _u16(self._left + off))))
            off += FRAME_HDR + _u16(self._left + off)
        return out

    def fifo_take(self, FifoGate gate):
        """-> (lines written, errors, blocks of whole lines left for the loop to
        write, then FifoGate.settle(); None: nothing left).  Once per gate."""
        cdef int g, s, e
        cdef list blocks
        for g in range(self._ngates):
            if self._gates[g] is gate:
                break
        else:
            return 0, 0, None
        written, errors = self._gate_lines[g], self._gate_errors[g]
        self._gate_lines[g] = self._gate_errors[g] = 0
        if self._gate_from[g] < 0:
            return written, errors, None
        blocks, s = [], self._gate_from[g]
        self._gate_from[g] = -1
        while s < self._n:
            e = self._block_end(s, self._n)
            blocks.append(PyBytes_FromStringAndSize(<char*>self._lines + self._ln_off[s],
                                                    self._ln_off[e] - self._ln_off[s]))
            s = e
        return written, errors, blocks
