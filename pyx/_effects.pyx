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

cdef enum:
    NLMSG_HDRLEN = 16
    NLMSG_ERROR = 2
    FRAME_HDR = 4           # u16 length, u16 socket slot before each frame
    TX_BATCH = 1024
    PIPE_BUF = 4096         # a pipe write up to this size lands whole (pipe(7))
    RECV_BUF = 1 << 16      # rtnetlink replies read per recv()

cdef struct frame_view:
    const uint8_t* data
    int length
    int slot


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

    def nmsgs(self, int idx):
        return self._get(idx).nmsgs

    def vips_on(self, int idx):
        return bool(self._get(idx).vips_on)

    def gen(self, int idx):
        return self._get(idx).gen

    def bump(self, list idxs):
        """The instances entered or left MASTER: bursts scheduled before are void."""
        cdef int idx
        for idx in idxs:
            self._get(idx).gen += 1

    # --- rtnetlink ----------------------------------------------------------
    def vip_move(self, list idxs, bint add):
        """-> a VipMove of every instance's add (or remove) messages, copied
        now: the sender thread's exchange() then needs nothing of this object."""
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
        return failed

    # --- announcements --------------------------------------------------------
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def announce(self, list idxs, list gens=None):
        """One burst per instance (`repeat` rounds over its frames), one
        sendmmsg() per run of frames on one socket.  gens: only instances
        whose gen still equals it (a delayed burst).  -> [(slot, frame)] a
        full device queue or socket buffer refused, in order, to retry."""
        cdef mmsghdr* msgs = <mmsghdr*>calloc(TX_BATCH, sizeof(mmsghdr))
        cdef iovec* iov = <iovec*>calloc(TX_BATCH, sizeof(iovec))
        if msgs == NULL or iov == NULL:
            free(msgs)
            free(iov)
            raise MemoryError()
        cdef list left = []
        cdef int pos, idx, r, slot, cur = -1, m = 0, sent, k
        cdef uint32_t off, rnd
        cdef prebuilt_t* p
        cdef const uint8_t* f
        cdef frame_view* pending = <frame_view*>malloc(TX_BATCH * sizeof(frame_view))
        cdef set refused = set()
        try:
            for pos in range(len(idxs)):
                idx = idxs[pos]
                p = self._get(idx)
                if gens is not None and p.gen != <uint32_t>gens[pos]:
                    continue
                for rnd in range(p.repeat):
                    off = 0
                    while off < p.frames_len:
                        f = p.frames + off
                        slot = _u16(f + 2)
                        if slot != cur or m == TX_BATCH:
                            _send(self, msgs, iov, pending, m, cur, left, refused)
                            m = 0
                            cur = slot
                        pending[m].data = f + FRAME_HDR
                        pending[m].length = _u16(f)
                        pending[m].slot = slot
                        m += 1
                        off += FRAME_HDR + _u16(f)
            _send(self, msgs, iov, pending, m, cur, left, refused)
        finally:
            free(msgs)
            free(iov)
            free(pending)
        return left

    def stats(self):
        return {"announce_sent": self._sent, "announce_deferred": self._deferred,
                "announce_errors": self._errors}

    # --- notify fifo ------------------------------------------------------------
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def fifo_lines(self, list idxs, list words, list priorities, bytes kind=b"INSTANCE"):
        """keepalived's `%s "%s" %s %d\\n` per instance, in blocks of whole
        lines of at most PIPE_BUF bytes (such a write never tears a line)."""
        cdef list blocks = []
        cdef bytearray buf = bytearray()
        cdef int pos, idx
        cdef prebuilt_t* p
        cdef bytes line
        for pos in range(len(idxs)):
            idx = idxs[pos]
            p = self._get(idx)
            line = <bytes>(b"%s %s %s %d\n" % (kind, PyBytes_FromStringAndSize(<char*>p.name, p.name_len),
                                       <bytes>words[pos], <int>priorities[pos]))
            if len(buf) + len(line) > PIPE_BUF and len(buf):
                blocks.append(bytes(buf))
                buf = bytearray()
            buf += line
        if len(buf):
            blocks.append(bytes(buf))
        return blocks


@cython.boundscheck(False)
@cython.wraparound(False)
cdef int _send(Effects self, mmsghdr* msgs, iovec* iov, frame_view* pending, int m, int slot,
               list left, set refused) except -1:
    """sendmmsg() the m pending frames of one socket slot; what the device
    queue or socket buffer refuses goes to `left`, and so does everything
    after it on that slot."""
    cdef int k = 0, r, fd
    if m == 0:
        return 0
    fd = self._fds[slot] if 0 <= slot < self._nfds else -1
    if fd < 0:
        self._errors += m
        return 0
    if slot in refused:         # keep order behind what this socket refused
        for k in range(m):
            left.append((slot, PyBytes_FromStringAndSize(<char*>pending[k].data,
                                                         pending[k].length)))
        self._deferred += m
        return 0
    memset(msgs, 0, m * sizeof(mmsghdr))
    for k in range(m):
        iov[k].iov_base = <void*>pending[k].data
        iov[k].iov_len = pending[k].length
        msgs[k].msg_hdr.msg_iov = &iov[k]
        msgs[k].msg_hdr.msg_iovlen = 1
    k = 0
    while k < m:
        with nogil:         # the netlink sender thread runs on meanwhile
            r = sendmmsg(fd, msgs + k, m - k, MSG_DONTWAIT)
        if r < 0:
            if errno == EINTR:
                continue
            if errno == EAGAIN or errno == ENOBUFS:
                refused.add(slot)
                self._deferred += m - k
                while k < m:
                    left.append((slot, PyBytes_FromStringAndSize(
                        <char*>pending[k].data, pending[k].length)))
                    k += 1
                return 0
            self._errors += 1           # e.g. the link went down: skip this frame
            k += 1
        else:
            self._sent += r
            k += r
    return 0


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


@cython.final
cdef class VipMove:
    """One batch of VIP messages and its replies, for the netlink sender
    thread: exchange() numbers, sends and collects the ACKs without the GIL,
    so the loop runs on while the kernel adds (removes) the VIPs."""

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

    def exchange(self, int fd, uint32_t seq0, int piece, double timeout):
        """Number the messages seq0.., send them `piece` per send() on the
        rtnetlink socket fd (non-blocking) and record each ACK's errno,
        reading them after each send so its socket buffer never overruns;
        then wait up to `timeout` for late ones.  -> (seconds spent in
        send(), errno of a send the kernel refused or of lost ACKs, else 0).
        Only what was not sent is marked with the refusal's errno."""
        cdef int k = 0, k1, r, fail = 0, overrun = 0
        cdef double spent = 0.0, t0, deadline
        cdef uint8_t* rbuf = <uint8_t*>malloc(RECV_BUF)
        cdef pollfd pfd
        if rbuf == NULL:
            raise MemoryError()
        if piece < 1:
            piece = 1
        with nogil:
            for k in range(self.count):
                (<uint32_t*>(self._buf + self._off[k] + 8))[0] = seq0 + k
            k = 0
            while k < self.count and not fail:
                k1 = k + piece if k + piece < self.count else self.count
                t0 = _now()
                r = send(fd, self._buf + self._off[k], self._off[k1] - self._off[k], 0)
                spent += _now() - t0
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
        free(rbuf)
        return spent, fail or overrun

    cdef int _missing_sent(self) noexcept nogil:
        """Messages sent that have no ACK yet (a refused send's are marked)."""
        cdef int k, n = 0
        for k in range(self.count):
            if self._err[k] < 0:
                n += 1
        return n

    cdef int _drain(self, int fd, uint8_t* rbuf, uint32_t seq0) noexcept nogil:
        """Read every reply queued, recording ACKs; -> ENOBUFS if the socket
        lost some (they never come), else 0."""
        cdef ssize_t n
        cdef size_t off
        cdef uint32_t mlen, k
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
                off += (mlen + 3) & ~3
