# VRRP protocol engine: RFC 5798 / RFC 3768 state machine with keepalived's
# FAULT state, advert timers in one indexed heap, batched raw-socket I/O.
#
# The steady state (a master sending adverts, a backup restarting its
# master-down timer) never touches a Python object: only state changes and
# rare events are queued for the daemon (pop_events).  Time is injected: every
# entry point takes `now` in monotonic microseconds, so tests drive it with a
# fake clock.  See vrrpd/_engine.pxd for the data layout.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memcpy, memcmp, memmove, memset
from libc.errno cimport errno, EINTR, EAGAIN, ENOBUFS
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_SET_ITEM
from collections import namedtuple as _namedtuple

cimport cython

cdef extern from "Python.h":
    object PyType_GenericAlloc(PyTypeObject*, Py_ssize_t)

from vrrpd._codec cimport (
    advert_t, decode_advert, encode_advert, encode_frame_header, patch_priority,
    REJECT_NONE, REJECT_TOO_SHORT, REJECT_BAD_LENGTH, REJECT_BAD_TTL,
    REJECT_UNKNOWN_VRID, REJECT_VERSION_MISMATCH, REJECT_AUTH_MISMATCH,
    REJECT_ADVERT_INT_MISMATCH, REJECT_ADDR_MISMATCH, REJECT_OWN_ADVERT,
    REJECT_UNICAST_UNKNOWN_PEER, REJECT_COUNT,
    CKSUM_V2, CKSUM_V3_PSEUDO, CKSUM_V3_NO_PSEUDO,
)

from vrrpd._sys cimport iovec, msghdr, mmsghdr, sendmmsg, MSG_DONTWAIT

cdef extern from "<sys/socket.h>" nogil:
    cdef struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr* CMSG_FIRSTHDR(msghdr*)
    cmsghdr* CMSG_NXTHDR(msghdr*, cmsghdr*)
    unsigned char* CMSG_DATA(cmsghdr*)
    size_t CMSG_SPACE(size_t)
    size_t CMSG_LEN(size_t)
    int recvmmsg(int, mmsghdr*, unsigned int, int, void*)
    enum:
        AF_INET
        AF_INET6
        MSG_TRUNC
        MSG_CTRUNC

cdef extern from "<linux/if_packet.h>" nogil:
    cdef struct sockaddr_ll:
        unsigned short sll_family
        unsigned short sll_protocol
        int sll_ifindex
        unsigned short sll_hatype
        unsigned char sll_pkttype
        unsigned char sll_halen
        unsigned char sll_addr[8]

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t)

cdef extern from "<sys/socket.h>" nogil:
    enum:
        AF_PACKET

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        uint32_t s_addr
    cdef struct in6_addr:
        unsigned char s6_addr[16]
    cdef struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    cdef struct sockaddr_in6:
        unsigned short sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    cdef struct in_pktinfo:
        int ipi_ifindex
        in_addr ipi_spec_dst
        in_addr ipi_addr
    cdef struct in6_pktinfo:
        in6_addr ipi6_addr
        unsigned int ipi6_ifindex
    enum:
        IPPROTO_IP
        IPPROTO_IPV6
        IP_PKTINFO
        IPV6_PKTINFO
        IPV6_HOPLIMIT

# --- exported vocabulary ---------------------------------------------------
# States: keepalived's numbering (vrrp.h), RFC 5798 6.4 plus FAULT.
cdef enum:
    S_INIT = 0
    S_BACKUP = 1
    S_MASTER = 2
    S_FAULT = 3

# Python names of the C constants; vrrpd/engine.py builds its IntEnums and
# name tables from these (the only numbering is the one here).
INIT, BACKUP, MASTER, FAULT = S_INIT, S_BACKUP, S_MASTER, S_FAULT

# Event kinds; pop_events() returns Event(idx, kind, code, detail):
#   EV_STATE        idx, EV_STATE, new_state, reason
#   EV_RX_LOWER_PRI idx, EV_RX_LOWER_PRI, their_priority, their_address
#   EV_REJECT       idx, EV_REJECT, reject_reason, source_address
#   EV_SOCK_REJECT  sock_id, EV_SOCK_REJECT, reject_reason, source_address
# Reject events are rate limited per socket (counters are exact).
cdef enum:
    E_STATE = 1
    E_RX_LOWER_PRI = 2
    E_REJECT = 3
    E_SOCK_REJECT = 4

EV_STATE, EV_RX_LOWER_PRI, EV_REJECT, EV_SOCK_REJECT = (
    E_STATE, E_RX_LOWER_PRI, E_REJECT, E_SOCK_REJECT)

# A tuple underneath, unpacked by position or by name.  pop_events fills
# each one in place (_event): one allocation, as for a plain tuple, rather
# than a call of Event's Python-level __new__ per event.
Event = _namedtuple("Event", "idx kind code detail")
cdef PyTypeObject* _EVENT_TYPE = <PyTypeObject*>Event


cdef inline object _event(object idx, object kind, object code, object detail):
    cdef object ev = PyType_GenericAlloc(_EVENT_TYPE, 4)
    Py_INCREF(idx)
    PyTuple_SET_ITEM(ev, 0, idx)
    Py_INCREF(kind)
    PyTuple_SET_ITEM(ev, 1, kind)
    Py_INCREF(code)
    PyTuple_SET_ITEM(ev, 2, code)
    Py_INCREF(detail)
    PyTuple_SET_ITEM(ev, 3, detail)
    return ev

# Transition reasons (for logs and notify).
cdef enum:
    R_STARTUP = 0
    R_MASTER_DOWN_TIMER = 1
    R_HIGHER_PRIORITY_ADVERT = 2
    R_PRIORITY_ZERO_ADVERT = 3
    R_PREEMPT = 4
    R_FAULT = 5
    R_FAULT_CLEARED = 6
    R_SHUTDOWN = 7
    R_SYNC_GROUP = 8
    R_RELOAD = 9            # a reload changed the instance's peers (set_peers)

REASON_STARTUP = R_STARTUP
REASON_MASTER_DOWN_TIMER = R_MASTER_DOWN_TIMER
REASON_HIGHER_PRIORITY_ADVERT = R_HIGHER_PRIORITY_ADVERT
REASON_PRIORITY_ZERO_ADVERT = R_PRIORITY_ZERO_ADVERT
REASON_PREEMPT = R_PREEMPT
REASON_FAULT = R_FAULT
REASON_FAULT_CLEARED = R_FAULT_CLEARED
REASON_SHUTDOWN = R_SHUTDOWN
REASON_SYNC_GROUP = R_SYNC_GROUP
REASON_RELOAD = R_RELOAD

# Reject reasons, in vrrpd/_codec.pxd's numbering.
REJECT_NAMES = (
    "none", "too_short", "bad_version", "bad_type", "bad_length",
    "bad_checksum", "zero_advert_int", "auth_ah", "bad_auth_type", "v2_ipv6",
    "bad_ttl", "unknown_vrid", "version_mismatch", "auth_mismatch",
    "advert_int_mismatch", "addr_mismatch", "own_advert",
    "unicast_unknown_peer")
assert len(REJECT_NAMES) == REJECT_COUNT

# Per-instance counters; rejects follow at C_REJECT + reason.
cdef enum:
    C_ADVERTS_SENT = 0
    C_ADVERTS_RECEIVED
    C_PRI0_SENT
    C_PRI0_RECEIVED
    C_TO_INIT               # C_TO_INIT + state: transitions into each state
    C_TO_BACKUP
    C_TO_MASTER
    C_TO_FAULT
    C_RX_LOWER_PRI
    C_RX_CKSUM_V2           # C_RX_CKSUM_V2 + ChecksumKind of accepted adverts
    C_RX_CKSUM_V3_PSEUDO
    C_RX_CKSUM_V3_NO_PSEUDO
    C_ADVERTS_LATE          # advert slots skipped because tick() ran late
    C_REJECT
    NICTR = C_REJECT + REJECT_COUNT

_ICTR_NAMES = ("adverts_sent", "adverts_received", "pri0_sent",
               "pri0_received", "became_init", "became_backup",
               "became_master", "became_fault", "rx_lower_pri",
               "rx_checksum_v2", "rx_checksum_v3_pseudo",
               "rx_checksum_v3_no_pseudo", "adverts_late")

# Per-socket counters; rejects not attributable to an instance at S_REJECT.
cdef enum:
    S_RX_PACKETS = 0
    S_RX_BATCHES
    S_RX_ERRORS
    S_TX_PACKETS
    S_TX_BATCHES
    S_TX_ERRORS
    S_TX_DROPPED            # queue could not grow (out of memory), or deferred too long
    S_TX_DEFERRED           # device queue full (ENOBUFS/EAGAIN): sent at a later flush
    S_LAST_ERRNO
    S_REJECT
    NSCTR = S_REJECT + REJECT_COUNT

_SCTR_NAMES = ("rx_packets", "rx_batches", "rx_errors", "tx_packets",
               "tx_batches", "tx_errors", "tx_dropped", "tx_deferred", "last_errno")

cdef enum:
    FD_CAPTURE = -1         # test sink: keep what is sent (pop_sent)
    FD_DISCARD = -2         # bench sink: count what is sent
    BATCH = 64              # recvmmsg batch
    TX_BATCH = 1024         # sendmmsg batch (UIO_MAXIOV)
    RXBUF = 4608            # > 60 IP header + 8 + 255*16 + 8
    CTRL = 128              # cmsg space per message (pktinfo + hop limit)
    NAMELEN = 32            # >= sizeof(sockaddr_in6)
    MAX_PKT = 8 + 255 * 16 + 8
    EV_CAP_MAX = 1 << 20
    HEADROOM = 64           # before each advert buffer: a frame's Ethernet + IP headers (<= 54)
    TX_BUSY_MAX = 100       # flushes a deferred send is retried (the daemon: every ms)
    VRRP_TTL = 255          # RFC 5798 5.1.1.3 / 7.1

# Reject events per socket: token bucket, REJ_RATE per second, burst REJ_BURST.
cdef double REJ_RATE = 10.0
cdef double REJ_BURST = 20.0

assert len(_ICTR_NAMES) == C_REJECT and len(_SCTR_NAMES) == S_REJECT


cdef enum:
    PHASES = 8              # advert phase slots per interval (see _phase)


cdef inline int64_t _phase(int idx, int64_t interval) noexcept nogil:
    # One of PHASES slots in the first half interval (Fibonacci hashing of the
    # slot number spreads neighbours): few enough that the loop still wakes
    # only PHASES times per interval, each wake sending one batch per socket.
    return <int64_t>((<uint32_t>idx * <uint32_t>2654435761u) >> 29) * (interval // 2) // PHASES


cdef inline uint8_t* _headroom(uint8_t* buf) noexcept nogil:
    return buf + HEADROOM if buf != NULL else NULL


cdef inline bint _is_multicast(const uint8_t* a, int alen) noexcept nogil:
    if alen == 4:
        return (a[0] & 0xF0) == 0xE0
    return a[0] == 0xFF


cdef inline void _follow_master(inst_t* p, advert_t* adv, const uint8_t* src) noexcept nogil:
    # RFC 5798 6.4.2: Master_Adver_Interval := the advert's interval (v3;
    # v2 intervals must match, RFC 3768 7.1); remember who the master is.
    if p.version == 3:
        p.master_adver_int = <int64_t>(adv.advert_int & 0x0FFF) * 10000
    memcpy(p.master_addr, src, p.alen)
    p.have_master = 1
    p.master_priority = adv.priority


cdef dict _counter_dict(const uint64_t* c, tuple names, int reject_base):
    cdef int i
    cdef dict d = {}
    for i in range(len(names)):
        d[names[i]] = c[i]
    for i in range(1, REJECT_COUNT):
        d["reject_" + REJECT_NAMES[i]] = c[reject_base + i]
    return d


def _advert_field(int version, int advert_int_cs):
    """The advert's interval field for advert_int_cs; ValueError if it cannot be sent."""
    if version == 2:
        if advert_int_cs % 100 or not 1 <= advert_int_cs // 100 <= 255:
            raise ValueError("VRRPv2 advert_int must be 1..255 whole seconds")
        return advert_int_cs // 100
    if not 1 <= advert_int_cs <= 4095:     # 12-bit field, RFC 5798 5.2.7
        raise ValueError("VRRPv3 advert_int must be 1..4095 centiseconds")
    return advert_int_cs


cdef class Engine:
    """The VRRP engine for many instances over a few raw sockets.

    Life of an instance: add_instance -> start -> (tick / on_readable /
    set_priority / set_fault)* -> stop -> remove_instance.  After any call
    the daemon re-arms its single timer at next_deadline() (tick() returns
    it too) and drains pop_events().
    """

    def __cinit__(self, int max_instances=16384, bint defer_sends=False):
        # defer_sends: adverts queued by start/set_priority/set_fault/
        # force_state wait for the next tick()/flush() instead of one
        # sendmmsg per call -- a daemon applying a thousand tracking changes
        # in one loop turn sends them in one batch per socket.
        if max_instances < 1:
            raise ValueError("max_instances must be >= 1")
        self._deferred = defer_sends
        self._max = max_instances
        self._inst = <inst_t*>calloc(max_instances, sizeof(inst_t))
        self._free = <int*>malloc(max_instances * sizeof(int))
        self._ictr = <uint64_t*>calloc(<size_t>max_instances * NICTR, sizeof(uint64_t))
        self._heap = <deadline_t*>malloc(max_instances * sizeof(deadline_t))
        self._hpos = <int*>malloc(max_instances * sizeof(int))
        self._dirty = NULL
        self._socks = NULL
        self._sctr = NULL
        self._nsocks = 0
        self._ev_cap = 256
        self._ev = <ev_t*>malloc(self._ev_cap * sizeof(ev_t))
        cdef size_t nb = TX_BATCH
        self._msgs = calloc(nb, sizeof(mmsghdr))
        self._iov = calloc(nb, sizeof(iovec))
        self._msgq = <int*>calloc(nb, sizeof(int))
        self._names = <uint8_t*>calloc(nb, NAMELEN)
        self._ctrl = <uint8_t*>calloc(nb, CTRL)
        self._rxbuf = <uint8_t*>malloc(<size_t>BATCH * RXBUF)
        if (not self._inst or not self._free or not self._ictr or not self._heap or not self._hpos
                or not self._ev or not self._msgs or not self._iov or not self._msgq
                or not self._names or not self._ctrl or not self._rxbuf):
            raise MemoryError()
        cdef int i
        for i in range(max_instances):
            self._free[i] = max_instances - 1 - i     # hand out 0, 1, 2, ...
            self._hpos[i] = -1
        self._nfree = max_instances
        self._sent = []

    def __dealloc__(self):
        cdef int i
        if self._inst:
            for i in range(self._max):
                if self._inst[i].used:
                    self._free_bufs(&self._inst[i])
        for i in range(self._nsocks):
            free(self._socks[i].outq)
        free(self._inst); free(self._free); free(self._ictr); free(self._heap); free(self._hpos)
        free(self._socks); free(self._sctr); free(self._dirty); free(self._ev)
        free(self._msgs); free(self._iov); free(self._msgq); free(self._names); free(self._ctrl)
        free(self._rxbuf)

    cdef void _free_bufs(self, inst_t* p) noexcept:
        free(p.vips); free(p.dsts)
        if p.pkts:
            free(p.pkts - HEADROOM)
        if p.pkts0:
            free(p.pkts0 - HEADROOM)
        p.vips = p.dsts = p.pkts = p.pkts0 = NULL

    cdef inst_t* _get(self, int idx) except NULL:
        if idx < 0 or idx >= self._max or not self._inst[idx].used:
            raise KeyError(f"no VRRP instance {idx}")
        return &self._inst[idx]

    # --- configuration ----------------------------------------------------
    def add_socket(self, int fd, int family, int ifindex):
        """Register a raw socket (vrrpd.net.sockets.open_vrrp_socket) -> sock_id.

        fd=-1: capture mode (sends kept for pop_sent), fd=-2: discard mode
        (sends counted only); neither makes a syscall.
        """
        if family != AF_INET and family != AF_INET6:
            raise ValueError("family must be AF_INET or AF_INET6")
        if fd < FD_DISCARD:
            raise ValueError("bad fd")
        cdef int n = self._nsocks + 1
        cdef sock_t* socks = <sock_t*>realloc(self._socks, n * sizeof(sock_t))
        if not socks:
            raise MemoryError()
        self._socks = socks
        cdef uint64_t* sctr = <uint64_t*>realloc(self._sctr, n * NSCTR * sizeof(uint64_t))
        if not sctr:
            raise MemoryError()
        self._sctr = sctr
        cdef int* dirty = <int*>realloc(self._dirty, n * sizeof(int))
        if not dirty:
            raise MemoryError()
        self._dirty = dirty
        cdef int sid = self._nsocks
        cdef sock_t* s = &self._socks[sid]
        memset(s, 0, sizeof(sock_t))
        memset(&self._sctr[sid * NSCTR], 0, NSCTR * sizeof(uint64_t))
        s.used = 1
        s.fd = fd
        s.link_fd = -1
        s.family = family
        s.ifindex = ifindex
        s.tokens = REJ_BURST
        self._nsocks = n
        return sid

    def set_link_tx(self, int sock_id, int fd, bytes mac=None):
        """Send the socket's multicast adverts as prebuilt Ethernet frames on
        the packet socket fd (vrrpd.net.sockets.open_link_socket), from mac; fd=-1
        goes back to the raw socket.  Why: the kernel's IP output path (route
        lookup, header, neighbour) is most of a master's CPU; a frame whose
        headers never change skips it.  Call again when the MAC changes.
        Unicast peers always use the raw socket (their MACs need ARP/ND)."""
        if sock_id < 0 or sock_id >= self._nsocks:
            raise ValueError(f"no socket {sock_id}")
        cdef sock_t* s = &self._socks[sock_id]
        if fd >= 0 and (mac is None or len(mac) != 6):
            raise ValueError("a link-layer sender needs the 6-byte MAC")
        if fd >= 0 and s.fd < 0:
            raise ValueError("test sinks have no link layer")
        s.link_fd = fd if fd >= 0 else -1
        if fd >= 0:
            memcpy(s.link_mac, <const char*>mac, 6)
        cdef int i
        for i in range(self._max):
            if self._inst[i].used and self._inst[i].sock_id == sock_id:
                self._frame_header(&self._inst[i])

    cdef void _frame_header(self, inst_t* p) noexcept:
        """Write the frame's headers into the room before both adverts: a
        frame is one contiguous buffer, one iovec (multicast: ndst is 1)."""
        cdef sock_t* s = &self._socks[p.sock_id]
        cdef uint8_t hdr[HEADROOM]
        cdef int n = 0
        if s.link_fd >= 0 and p.multicast:
            n = encode_frame_header(hdr, HEADROOM, p.family, s.link_mac, p.src, p.dsts,
                                    p.pkt_len)
        if n > 0:
            memcpy(p.pkts - n, hdr, n)
            memcpy(p.pkts0 - n, hdr, n)
        p.frame_hdr_len = n if n > 0 else 0

    def add_instance(self, *, int sock_id, int vrid, int version, int priority,
                     int advert_int_cs, bint preempt=True, int preempt_delay_cs=0,
                     bytes src, list dsts, list vips, int auth_type=0,
                     bytes auth_pass=b"", bint v3_checksum_as_v2=False,
                     bint owner=False, bint accept_unicast_from_peers_only=True,
                     int down_timer_adverts=3, bint lower_prio_no_advert=False,
                     bint higher_prio_send_advert=False, bint skip_check_adv_addr=False):
        """Configure one virtual router -> idx.  Raises ValueError on bad config.

        src: our primary address (packed), the adverts' source.  dsts: the
        multicast group, or the unicast peers.  vips: the advert's addresses.
        advert_int_cs: centiseconds (v2: whole seconds, so a multiple of 100).
        lower_prio_no_advert, higher_prio_send_advert, skip_check_adv_addr:
        keepalived's options of those names (see _on_advert / _check).
        """
        if sock_id < 0 or sock_id >= self._nsocks:
            raise ValueError(f"no socket {sock_id}")
        cdef sock_t* s = &self._socks[sock_id]
        cdef int family = s.family
        cdef int alen = 4 if family == AF_INET else 16
        if not 1 <= vrid <= 255:
            raise ValueError("vrid must be 1..255")
        if version not in (2, 3):
            raise ValueError("version must be 2 or 3")
        if version == 2 and family != AF_INET:
            raise ValueError("VRRPv2 is IPv4 only (RFC 3768)")
        if not 1 <= priority <= 255:
            raise ValueError("priority must be 1..255")
        if s.vrid_map[vrid]:
            raise ValueError(f"VRID {vrid} already used on socket {sock_id}")
        cdef int field = _advert_field(version, advert_int_cs)
        if preempt_delay_cs < 0:
            raise ValueError("preempt_delay must be >= 0")
        if auth_type not in (0, 1) or (auth_type and version != 2):
            raise ValueError("auth_type: 0, or 1 (password) with VRRPv2 only")
        if len(src) != alen:
            raise ValueError("src has the wrong address length")
        if not dsts or any(len(d) != alen for d in dsts):
            raise ValueError("dsts must be non-empty packed addresses")
        if len(vips) > 255 or any(len(v) != alen for v in vips):
            raise ValueError("vips must be at most 255 packed addresses")
        if not 1 <= down_timer_adverts <= 255:
            raise ValueError("down_timer_adverts must be 1..255")
        if not self._nfree:
            raise ValueError("no free instance slot (max_instances)")

        cdef int idx = self._free[self._nfree - 1]
        cdef inst_t* p = &self._inst[idx]
        memset(p, 0, sizeof(inst_t))
        p.version = version
        p.vrid = vrid
        p.priority = priority
        p.preempt = preempt
        p.owner = owner
        p.auth_type = auth_type
        p.v3_as_v2 = v3_checksum_as_v2
        p.peers_only = accept_unicast_from_peers_only
        p.naddr = len(vips)
        p.alen = alen
        p.family = family
        p.sock_id = sock_id
        p.ndst = len(dsts)
        p.down_timer_adverts = down_timer_adverts
        p.lower_prio_no_advert = lower_prio_no_advert
        p.higher_prio_send_advert = higher_prio_send_advert
        p.skip_check_adv_addr = skip_check_adv_addr
        p.sync_next = idx
        p.advert_field = field
        p.adver_int = field * (1000000 if version == 2 else 10000)
        p.master_adver_int = p.adver_int
        p.preempt_delay = <int64_t>preempt_delay_cs * 10000
        memcpy(p.src, <const char*>src, alen)
        cdef bytes b = auth_pass[:8]            # keepalived: 8 bytes, zero padded
        memcpy(p.auth_data, <const char*>b, len(b))
        b = dsts[0]
        p.multicast = p.ndst == 1 and _is_multicast(<const uint8_t*><const char*>b, alen)

        p.vips = <uint8_t*>malloc(max(1, p.naddr * alen))
        p.dsts = <uint8_t*>malloc(p.ndst * alen)
        if not p.vips or not p.dsts:
            self._free_bufs(p)
            raise MemoryError()
        cdef int i
        for i in range(p.naddr):
            b = vips[i]
            memcpy(p.vips + i * alen, <const char*>b, alen)
        for i in range(p.ndst):
            b = dsts[i]
            memcpy(p.dsts + i * alen, <const char*>b, alen)
        # Pre-encode one advert per destination (the v3 IPv4 checksum covers
        # the destination); priority changes are patched in place later.
        try:
            self._reencode(p, field, p.vips, p.naddr)
        except BaseException:
            self._free_bufs(p)
            raise
        p.used = 1
        p.state = S_INIT
        self._nfree -= 1
        s.vrid_map[vrid] = idx + 1
        memset(&self._ictr[<size_t>idx * NICTR], 0, NICTR * sizeof(uint64_t))
        return idx

    def remove_instance(self, int idx):
        """Free the slot (reload).  A master first sends priority 0 (keepalived)."""
        cdef inst_t* p = self._get(idx)
        if p.state == S_MASTER:
            self._enqueue(idx, True)
            self._flush()
        # Sends the device deferred go with it (their buffers do).
        cdef sock_t* s = &self._socks[p.sock_id]
        self._drop_queued(idx)
        self._heap_remove(idx)
        self._sync_unlink(idx)
        s.vrid_map[p.vrid] = 0
        self._free_bufs(p)
        p.used = 0
        self._free[self._nfree] = idx
        self._nfree += 1

    cdef void _drop_queued(self, int idx) noexcept:
        """Forget idx's sends still queued (deferred by a full device)."""
        cdef inst_t* p = &self._inst[idx]
        cdef sock_t* s = &self._socks[p.sock_id]
        cdef int i, kept = 0
        for i in range(s.outq_len):
            if s.outq[i].idx != idx:
                s.outq[kept] = s.outq[i]
                kept += 1
            else:
                self._sctr[p.sock_id * NSCTR + S_TX_DROPPED] += 1
        s.outq_len = kept

    def set_peers(self, int idx, list dsts, int64_t now):
        """Reload: new destinations for a running instance (unicast peers, or
        the multicast group).  keepalived 2.2.7 keeps the instance, which
        passes through FAULT while it has no socket for them: a master or
        backup reports FAULT (a master first sends priority 0 to the old
        destinations), then BACKUP with its master-down timer running.  An
        instance in INIT or FAULT only changes destinations."""
        cdef inst_t* p = self._get(idx)
        cdef int alen = p.alen
        if not dsts or len(dsts) > 255 or any(len(d) != alen for d in dsts):
            raise ValueError("dsts must be 1..255 packed addresses")
        cdef int ndst = len(dsts)
        cdef uint8_t* addrs = <uint8_t*>malloc(ndst * alen)
        if not addrs:
            raise MemoryError()
        cdef int i
        cdef bytes b
        for i in range(ndst):
            b = dsts[i]
            memcpy(addrs + i * alen, <const char*>b, alen)
        cdef bint running = p.state == S_MASTER or p.state == S_BACKUP
        if running:
            if p.state == S_MASTER:
                self._enqueue(idx, True)
            self._heap_remove(idx)
            p.wants_master = 0
            self._set_state(idx, S_FAULT, R_RELOAD)
        # Queued sends name destinations by position: out before the list changes.
        self._flush()
        self._drop_queued(idx)
        cdef uint8_t* old = p.dsts
        cdef int old_n = p.ndst
        cdef uint8_t old_mc = p.multicast
        p.dsts = addrs
        p.ndst = ndst
        p.multicast = ndst == 1 and _is_multicast(addrs, alen)
        try:
            self._reencode(p, p.advert_field, p.vips, p.naddr)
        except BaseException:
            p.dsts = old
            p.ndst = old_n
            p.multicast = old_mc
            free(addrs)
            raise
        free(old)
        if running and not p.faulted:
            self._become_backup(idx, now, R_RELOAD)
        self._flush_unless_deferred()

    def set_advert_addrs(self, int idx, list vips):
        """Reload: a new virtual_ipaddress list for a running instance.  The
        adverts (both priority variants) are re-encoded; state, timers and
        counters stay (keepalived keeps an instance whose VIPs changed).
        Adverts from others are checked against the new list from now on."""
        cdef inst_t* p = self._get(idx)
        cdef int alen = p.alen
        if len(vips) > 255 or any(len(v) != alen for v in vips):
            raise ValueError("vips must be at most 255 packed addresses")
        cdef int naddr = len(vips)
        cdef uint8_t* addrs = <uint8_t*>malloc(max(1, naddr * alen))
        if not addrs:
            raise MemoryError()
        cdef int i
        cdef bytes b
        for i in range(naddr):
            b = vips[i]
            memcpy(addrs + i * alen, <const char*>b, alen)
        try:
            self._reencode(p, p.advert_field, addrs, naddr)
        except BaseException:
            free(addrs)
            raise
        free(p.vips)
        p.vips = addrs
        p.naddr = naddr

    def retune(self, int idx, int64_t now, *, int advert_int_cs, bint preempt,
               int preempt_delay_cs, int down_timer_adverts, bint lower_prio_no_advert,
               bint higher_prio_send_advert, bint skip_check_adv_addr, int version=0):
        """Reload: new version (0: unchanged), timing and election settings for a running
        instance, which keeps its state (keepalived 2.2.7 keeps an instance
        whose version, advert_int or preempt changed).  A master's next
        advert comes at the new interval at the latest; a backup's down
        timer follows from the next advert it hears."""
        cdef inst_t* p = self._get(idx)
        if version == 0:
            version = p.version
        if version not in (2, 3) or (version == 2 and p.family != AF_INET) or \
                (version == 3 and p.auth_type):
            raise ValueError("version: 2 (IPv4 only) or 3 (no authentication)")
        cdef int field = _advert_field(version, advert_int_cs)
        if preempt_delay_cs < 0 or not 1 <= down_timer_adverts <= 255:
            raise ValueError("preempt_delay must be >= 0, down_timer_adverts 1..255")
        cdef int old_version = p.version
        if field != p.advert_field or version != p.version:
            p.version = version
            try:
                self._reencode(p, field, p.vips, p.naddr)
            except BaseException:
                p.version = old_version
                raise
            p.advert_field = field
            p.adver_int = field * (1000000 if p.version == 2 else 10000)
            # RFC 5798 6.4.3: a master advertises its own interval; v2 has no other.
            if p.state == S_MASTER or p.version == 2:
                p.master_adver_int = p.adver_int
            if p.state == S_MASTER and p.deadline > now + p.adver_int:
                self._heap_set(idx, now + p.adver_int)
        p.preempt = preempt
        p.preempt_delay = <int64_t>preempt_delay_cs * 10000
        p.down_timer_adverts = down_timer_adverts
        p.lower_prio_no_advert = lower_prio_no_advert
        p.higher_prio_send_advert = higher_prio_send_advert
        p.skip_check_adv_addr = skip_check_adv_addr

    cdef int _reencode(self, inst_t* p, int field, const uint8_t* addrs, int naddr) except -1:
        """Both advert variants of p, encoded for this interval field and
        address list; p's packets change only once every one encoded (sends
        already queued go out at flush time from them)."""
        cdef uint8_t* pkts = <uint8_t*>malloc(<size_t>p.ndst * MAX_PKT)
        cdef int i, n = 0
        if not pkts:
            raise MemoryError()
        for i in range(p.ndst):
            n = encode_advert(pkts + i * MAX_PKT, MAX_PKT, p.version, p.family,
                              p.vrid, p.priority, field, addrs, naddr,
                              p.auth_type, p.auth_data, p.src, p.dsts + i * p.alen,
                              p.v3_as_v2)
            if n < 0:
                free(pkts)
                raise ValueError("cannot encode an advert with these settings")
        # Both variants in buffers of the encoded size (an advert is usually a
        # few dozen bytes, MAX_PKT is 4 kB: at thousands of instances that is
        # most of the daemon's memory); replaced, not resized in place.
        cdef uint8_t* cur = _headroom(<uint8_t*>malloc(HEADROOM + <size_t>p.ndst * n))
        cdef uint8_t* zero = _headroom(<uint8_t*>malloc(HEADROOM + <size_t>p.ndst * n))
        if not cur or not zero:
            if cur:
                free(cur - HEADROOM)
            if zero:
                free(zero - HEADROOM)
            free(pkts)
            raise MemoryError()
        for i in range(p.ndst):
            memcpy(cur + i * n, pkts + i * MAX_PKT, n)
            memcpy(zero + i * n, pkts + i * MAX_PKT, n)
            patch_priority(zero + i * n, 0)
        free(pkts)
        if p.pkts:
            free(p.pkts - HEADROOM)
        if p.pkts0:
            free(p.pkts0 - HEADROOM)
        p.pkts = cur
        p.pkts0 = zero
        p.pkt_len = n
        self._frame_header(p)                   # its IP length follows pkt_len
        return 0

    # --- control (the daemon) ------------------------------------------------
    def start(self, int idx, int64_t now, bint want_master=False):
        """INIT -> BACKUP with the master-down timer running, or FAULT if faulted.

        keepalived: every instance enters BACKUP first.  want_master (config
        `state MASTER`) makes an owner MASTER at once and shortens a
        non-owner's first down timer to Advert_Interval + minimal skew.
        """
        cdef inst_t* p = self._get(idx)
        if p.state != S_INIT:
            return
        p.want_master = want_master
        p.wants_master = want_master      # keepalived: wantstate starts as the configured state
        p.master_adver_int = p.adver_int
        p.have_master = 0
        if p.faulted:
            self._set_state(idx, S_FAULT, R_STARTUP)
        elif p.owner and want_master:
            self._become_master(idx, now, now, R_STARTUP)
        else:
            # preempt_delay runs from startup (keepalived vrrp_scheduler.c)
            p.preempt_time = now + p.preempt_delay if p.preempt_delay else 0
            self._set_state(idx, S_BACKUP, R_STARTUP)
            p.down_reason = R_MASTER_DOWN_TIMER
            if want_master:
                self._heap_set(idx, now + p.adver_int + self._skew_pri(p, 255))
            else:
                self._heap_set(idx, now + self._master_down(p))
        self._flush_unless_deferred()

    def set_priority(self, int idx, int priority, int64_t now):
        """Set the effective priority; a master re-advertises at once."""
        cdef inst_t* p = self._get(idx)
        if not 1 <= priority <= 255:
            raise ValueError("priority must be 1..255")
        if priority == p.priority:
            return
        p.priority = priority
        cdef int i
        for i in range(p.ndst):
            patch_priority(p.pkts + i * p.pkt_len, priority)
        if p.state == S_MASTER:
            self._enqueue(idx, False)
            self._flush_unless_deferred()

    def set_fault(self, int idx, bint faulted, int64_t now):
        """Enter FAULT (a master first sends priority 0) or leave it -> BACKUP."""
        cdef inst_t* p = self._get(idx)
        p.faulted = faulted
        if faulted:
            if p.state == S_MASTER:
                self._enqueue(idx, True)
            if p.state == S_MASTER or p.state == S_BACKUP:
                self._heap_remove(idx)
                p.wants_master = 0
                self._set_state(idx, S_FAULT, R_FAULT)
        elif p.state == S_FAULT:
            # keepalived: even an owner with `state MASTER` goes BACKUP and
            # waits its master-down timer; only start-up takes MASTER at once.
            self._become_backup(idx, now, R_FAULT_CLEARED)
        self._flush_unless_deferred()

    def force_state(self, int idx, int state, int64_t now):
        """Sync group: follow a member into MASTER or BACKUP (keepalived
        vrrp_sync_master / vrrp_sync_backup).  Only BACKUP <-> MASTER moves;
        FAULT and INIT instances stay put.  A master pushed to BACKUP sends
        priority 0 so the peer group's members take over after Skew_Time
        together, instead of one Master_Down_Interval later."""
        cdef inst_t* p = self._get(idx)
        if state == S_MASTER and p.state == S_BACKUP:
            self._become_master(idx, now, now, R_SYNC_GROUP)
        elif state == S_BACKUP and p.state == S_MASTER:
            self._enqueue(idx, True)
            self._become_backup(idx, now, R_SYNC_GROUP)
        elif state != S_MASTER and state != S_BACKUP:
            raise ValueError("force_state: MASTER or BACKUP only")
        self._flush_unless_deferred()

    def stop(self, int idx, int64_t now):
        """Shutdown: a master sends priority 0 (RFC 5798 6.4.3); state INIT."""
        cdef inst_t* p = self._get(idx)
        if p.state == S_INIT:
            return
        if p.state == S_MASTER:
            self._enqueue(idx, True)
        self._heap_remove(idx)
        p.wants_master = 0
        self._set_state(idx, S_INIT, R_SHUTDOWN)
        self._flush()

    # --- timers ----------------------------------------------------------
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def tick(self, int64_t now, int max_masters=-1):
        """Run every due timer; -> next deadline (us) or -1 if none.

        Due adverts go out in one sendmmsg per socket; expired master-down
        timers make their instance MASTER.  max_masters >= 0: stop before
        more than that many become MASTER, leaving the other due timers for
        a later tick (the next deadline returned is then not in the future).
        """
        cdef int idx, made = 0
        cdef inst_t* p
        cdef int64_t d
        while self._heap_len and self._heap[0].deadline <= now:
            idx = self._heap[0].idx
            p = &self._inst[idx]
            if p.state == S_MASTER:
                self._enqueue(idx, False)
                # Jitter-free: the next slot follows the previous deadline;
                # slots missed by a late tick are skipped, not bunched.
                d = p.deadline + p.adver_int
                if p.phase_pending:         # a new master's second: its third takes the phase
                    p.phase_pending = 0
                    d -= _phase(idx, p.adver_int)
                while d <= now:
                    d += p.adver_int
                    self._ictr[<size_t>idx * NICTR + C_ADVERTS_LATE] += 1
                self._heap_set(idx, d)
            elif p.state == S_BACKUP:
                if made == max_masters:
                    break
                p.wants_master = 1
                if self._sync_held(idx):
                    # keepalived vrrp_sync_can_goto_master: stay BACKUP,
                    # wanting MASTER, and wait another Master_Down_Interval.
                    self._heap_set(idx, now + self._master_down(p))
                else:
                    self._become_master(idx, p.deadline, now, p.down_reason)
                    made += 1
            else:
                self._heap_remove(idx)
        self._flush()
        return self._heap[0].deadline if self._heap_len else -1

    def next_deadline(self):
        """Earliest timer (us) or -1."""
        return self._heap[0].deadline if self._heap_len else -1

    # --- receive ---------------------------------------------------------
    @cython.boundscheck(False)
    @cython.wraparound(False)
    def on_readable(self, int sock_id, int64_t now):
        """Drain the socket with recvmmsg (bounded per call) -> packets read."""
        if sock_id < 0 or sock_id >= self._nsocks:
            raise ValueError(f"no socket {sock_id}")
        cdef sock_t* s = &self._socks[sock_id]
        if s.fd < 0:
            return 0
        cdef mmsghdr* msgs = <mmsghdr*>self._msgs
        cdef iovec* iov = <iovec*>self._iov
        cdef uint64_t* sc = &self._sctr[sock_id * NSCTR]
        cdef int i, r, rounds = 0, total = 0
        for i in range(BATCH):
            iov[i].iov_base = self._rxbuf + i * RXBUF
            iov[i].iov_len = RXBUF
            msgs[i].msg_hdr.msg_iov = &iov[i]
            msgs[i].msg_hdr.msg_iovlen = 1
        # At most 16 batches per call: the loop stays responsive under a
        # flood; the reader is level-triggered and calls again.
        while rounds < 16:
            for i in range(BATCH):
                msgs[i].msg_hdr.msg_name = self._names + i * NAMELEN
                msgs[i].msg_hdr.msg_namelen = NAMELEN
                msgs[i].msg_hdr.msg_control = self._ctrl + i * CTRL
                msgs[i].msg_hdr.msg_controllen = CTRL
                msgs[i].msg_hdr.msg_flags = 0
            r = recvmmsg(s.fd, msgs, BATCH, MSG_DONTWAIT, NULL)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:          # == EWOULDBLOCK on Linux
                    sc[S_RX_ERRORS] += 1
                    sc[S_LAST_ERRNO] = errno
                break
            sc[S_RX_BATCHES] += 1
            sc[S_RX_PACKETS] += r
            for i in range(r):
                self._rx_one(sock_id, i, now)
            total += r
            rounds += 1
            if r < BATCH:
                break
        self._flush()
        return total

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _rx_one(self, int sid, int i, int64_t now) noexcept:
        cdef mmsghdr* m = &(<mmsghdr*>self._msgs)[i]
        cdef uint8_t* buf = self._rxbuf + i * RXBUF
        cdef size_t n = m.msg_len
        cdef size_t ihl, tot
        cdef int ttl = -1
        cdef cmsghdr* c
        cdef const uint8_t* dst = NULL
        cdef uint8_t zero16[16]
        if m.msg_hdr.msg_flags & MSG_TRUNC:
            self._reject(sid, -1, REJECT_BAD_LENGTH, NULL, now)
            return
        if self._socks[sid].family == AF_INET:
            # Raw IPv4 delivers the IP header: TTL, source, destination.
            if n < 20:
                self._reject(sid, -1, REJECT_TOO_SHORT, NULL, now)
                return
            ihl = (buf[0] & 0x0F) * 4
            tot = (buf[2] << 8) | buf[3]
            if ihl < 20 or ihl > n:
                self._reject(sid, -1, REJECT_TOO_SHORT, buf + 12, now)
                return
            if tot != n:
                self._reject(sid, -1, REJECT_BAD_LENGTH, buf + 12, now)
                return
            self._dispatch(sid, buf + ihl, n - ihl, buf + 12, buf + 16, buf[8], now)
            return
        # IPv6 gives the payload; source from msg_name, destination and hop
        # limit from IPV6_PKTINFO / IPV6_HOPLIMIT (IPV6_RECV* socket options).
        c = CMSG_FIRSTHDR(&m.msg_hdr)
        while c != NULL:
            if c.cmsg_level == IPPROTO_IPV6:
                if c.cmsg_type == IPV6_PKTINFO:
                    dst = (<in6_pktinfo*>CMSG_DATA(c)).ipi6_addr.s6_addr
                elif c.cmsg_type == IPV6_HOPLIMIT:
                    ttl = (<int*>CMSG_DATA(c))[0]
            c = CMSG_NXTHDR(&m.msg_hdr, c)
        if dst == NULL:
            memset(zero16, 0, 16)       # checksum will not match: counted
            dst = zero16
        self._dispatch(sid, buf, n,
                       (<sockaddr_in6*>(self._names + i * NAMELEN)).sin6_addr.s6_addr,
                       dst, ttl, now)

    def inject(self, int sock_id, bytes payload, bytes src, bytes dst, int ttl,
               int64_t now):
        """Tests: process payload (the VRRP message) as if received on sock_id.

        ttl=-1 means unknown (not checked), like a missing hop-limit cmsg.
        """
        if sock_id < 0 or sock_id >= self._nsocks:
            raise ValueError(f"no socket {sock_id}")
        cdef int alen = 4 if self._socks[sock_id].family == AF_INET else 16
        if len(src) != alen or len(dst) != alen:
            raise ValueError("src/dst have the wrong address length")
        self._sctr[sock_id * NSCTR + S_RX_PACKETS] += 1
        self._dispatch(sock_id, <const uint8_t*><const char*>payload, len(payload),
                       <const uint8_t*><const char*>src,
                       <const uint8_t*><const char*>dst, ttl, now)
        self._flush()

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _dispatch(self, int sid, const uint8_t* pkt, size_t n,
                        const uint8_t* src, const uint8_t* dst, int ttl,
                        int64_t now) noexcept:
        cdef sock_t* s = &self._socks[sid]
        cdef int idx = s.vrid_map[pkt[1]] - 1 if n >= 2 else -1
        cdef advert_t adv
        cdef int rc = decode_advert(pkt, n, s.family, src, dst, &adv)
        if rc != REJECT_NONE:
            self._reject(sid, idx, rc, src, now)
            return
        if idx < 0:
            self._reject(sid, -1, REJECT_UNKNOWN_VRID, src, now)
            return
        cdef inst_t* p = &self._inst[idx]
        cdef int alen = p.alen
        cdef int i, j
        cdef bint found
        # RFC 5798 7.1 / keepalived vrrp_check_packet, in that order.
        if adv.version != p.version:
            self._reject(sid, idx, REJECT_VERSION_MISMATCH, src, now)
            return
        # TTL/hop limit must be 255; keepalived skips this for unicast peers
        # (they may be routed), and so do we.
        if p.multicast and ttl >= 0 and ttl != VRRP_TTL:
            self._reject(sid, idx, REJECT_BAD_TTL, src, now)
            return
        if memcmp(src, p.src, alen) == 0:
            self._reject(sid, idx, REJECT_OWN_ADVERT, src, now)
            return
        if not p.multicast and p.peers_only:
            found = False
            for i in range(p.ndst):
                if memcmp(src, p.dsts + i * alen, alen) == 0:
                    found = True
                    break
            if not found:
                self._reject(sid, idx, REJECT_UNICAST_UNKNOWN_PEER, src, now)
                return
        if p.version == 2:
            if adv.auth_type != p.auth_type or (
                    p.auth_type == 1 and (adv.auth_data == NULL or
                                          memcmp(adv.auth_data, p.auth_data, 8) != 0)):
                self._reject(sid, idx, REJECT_AUTH_MISMATCH, src, now)
                return
            # RFC 3768 7.1: a differing interval is discarded.
            if adv.advert_int != p.advert_field:
                self._reject(sid, idx, REJECT_ADVERT_INT_MISMATCH, src, now)
                return
        # The address list must hold exactly our VIPs, in any order.
        # keepalived 2.2 drops such adverts (vrrp_check_packet: naddr !=
        # vip_cnt or a VIP missing -> VRRP_PACKET_KO), so do we; with
        # skip_check_adv_addr only when the sender is not the master we
        # last heard.
        if (p.skip_check_adv_addr and p.have_master and
                memcmp(src, p.master_addr, alen) == 0):
            pass
        elif adv.naddr != p.naddr:
            self._reject(sid, idx, REJECT_ADDR_MISMATCH, src, now)
            return
        elif memcmp(adv.addrs, p.vips, p.naddr * alen) != 0:
            for i in range(p.naddr):
                found = False
                for j in range(adv.naddr):
                    if memcmp(p.vips + i * alen, adv.addrs + j * alen, alen) == 0:
                        found = True
                        break
                if not found:
                    self._reject(sid, idx, REJECT_ADDR_MISMATCH, src, now)
                    return
        self._on_advert(idx, &adv, src, now)

    cdef void _on_advert(self, int idx, advert_t* adv, const uint8_t* src,
                         int64_t now) noexcept:
        cdef inst_t* p = &self._inst[idx]
        cdef uint64_t* c = &self._ictr[<size_t>idx * NICTR]
        cdef int their = adv.priority
        cdef int cmp
        c[C_ADVERTS_RECEIVED] += 1
        if adv.checksum_kind <= CKSUM_V3_NO_PSEUDO:
            c[C_RX_CKSUM_V2 + adv.checksum_kind] += 1
        if their == 0:
            c[C_PRI0_RECEIVED] += 1
        if p.state == S_BACKUP:
            if their == 0:
                # RFC 5798 6.4.2: the master is leaving; take over after Skew_Time.
                p.down_reason = R_PRIORITY_ZERO_ADVERT
                self._heap_set(idx, now + self._skew(p))
            elif (not p.preempt or their >= p.priority or
                  (p.preempt_delay and (p.preempt_time == 0 or p.preempt_time > now))):
                # Accept this master.  keepalived's preempt_delay: a lower
                # priority master is still accepted until preempt_delay has
                # run since startup or since its first lower advert.
                _follow_master(p, adv, src)
                p.wants_master = 0        # keepalived: an accepted master means wantstate BACKUP
                if p.preempt_delay:
                    if their >= p.priority:
                        p.preempt_time = 0
                    elif p.preempt_time == 0:
                        p.preempt_time = now + p.preempt_delay
                p.down_reason = R_MASTER_DOWN_TIMER
                self._heap_set(idx, now + self._master_down(p))
            else:
                # Lower priority and we may preempt: discard; the running
                # down timer expires and we take over (RFC 5798 6.4.2).
                # The address is still noted, as keepalived does for SNMP.
                memcpy(p.master_addr, src, p.alen)
                p.have_master = 1
                p.master_priority = their
                p.down_reason = R_PREEMPT
        elif p.state == S_MASTER:
            if their == 0:
                # RFC 5798 6.4.3: answer at once so backups keep us.
                self._enqueue(idx, False)
                return
            cmp = memcmp(src, p.src, p.alen)
            if their > p.priority or (their == p.priority and cmp > 0):
                # Step down without sending priority 0 (keepalived); with
                # higher_prio_send_advert one last advert first, so a master
                # with garp_lower_prio_repeat re-sends its GARPs.
                if p.higher_prio_send_advert:
                    self._enqueue(idx, False)
                _follow_master(p, adv, src)
                p.preempt_time = 0
                p.wants_master = 0
                p.down_reason = R_MASTER_DOWN_TIMER
                self._set_state(idx, S_BACKUP, R_HIGHER_PRIORITY_ADVERT)
                self._heap_set(idx, now + self._master_down(p))
            else:
                # Lower (or equal with a lower address): re-assert at once
                # (keepalived; lower_prio_no_advert keeps to the RFC and
                # does not) and tell the daemon (notify_master_rx_lower_pri).
                if not p.lower_prio_no_advert:
                    self._enqueue(idx, False)
                c[C_RX_LOWER_PRI] += 1
                self._event(idx, E_RX_LOWER_PRI, their, 0, src, p.alen)

    cdef void _reject(self, int sid, int idx, int reason, const uint8_t* src,
                      int64_t now) noexcept:
        cdef sock_t* s = &self._socks[sid]
        cdef int alen = 4 if s.family == AF_INET else 16
        if idx >= 0:
            self._ictr[<size_t>idx * NICTR + C_REJECT + reason] += 1
        else:
            self._sctr[sid * NSCTR + S_REJECT + reason] += 1
        # Log a sample: token bucket per socket keeps a flood from flooding us.
        if now > s.tokens_at:
            s.tokens = min(REJ_BURST, s.tokens + (now - s.tokens_at) * (REJ_RATE / 1e6))
            s.tokens_at = now
        if s.tokens < 1.0:
            return
        s.tokens -= 1.0
        if idx >= 0:
            self._event(idx, E_REJECT, reason, 0, src, alen if src else 0)
        else:
            self._event(sid, E_SOCK_REJECT, reason, 0, src, alen if src else 0)

    # --- transitions -----------------------------------------------------
    cdef int64_t _skew_pri(self, inst_t* p, int prio) noexcept:
        # keepalived VRRP_TIMER_SKEW: v2 (256-Priority)/256 s (RFC 3768 6.1);
        # v3 ((256-Priority) * Master_Adver_Interval)/256 (RFC 5798 6.1).
        if p.version == 2:
            return (256 - prio) * 1000000 // 256
        return (256 - prio) * p.master_adver_int // 256

    cdef int64_t _skew(self, inst_t* p) noexcept:
        return self._skew_pri(p, p.priority)

    cdef int64_t _master_down(self, inst_t* p) noexcept:
        # Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time
        return p.down_timer_adverts * p.master_adver_int + self._skew(p)

    cdef void _become_master(self, int idx, int64_t base, int64_t now, int reason) noexcept:
        cdef inst_t* p = &self._inst[idx]
        cdef int64_t d
        p.master_adver_int = p.adver_int      # we advertise our own interval
        memcpy(p.master_addr, p.src, p.alen)
        p.have_master = 1
        p.master_priority = p.priority
        p.wants_master = 1
        self._set_state(idx, S_MASTER, reason)
        # RFC 5798 6.4.2: send an advert at once and set the Adver_Timer to
        # Advertisement_Interval (keepalived's sands = now + adver_int), then
        # advertise every interval counted from the timer's deadline (not from
        # when we ran).  Instances that become master together (start-up, a
        # failover of many) would otherwise advertise in one burst forever
        # after: the third advert comes up to half an interval early, at a
        # per-instance phase, which spreads them over the interval (an early
        # advert only restarts the backups' timers; v3 backups learn the
        # interval from the field).  Not the second: in a takeover of
        # thousands it would come while the others are still being made master.
        self._enqueue(idx, False)
        d = base + p.adver_int
        while d <= now:
            d += p.adver_int
        p.phase_pending = 1
        self._heap_set(idx, d)

    cdef void _become_backup(self, int idx, int64_t now, int reason) noexcept:
        cdef inst_t* p = &self._inst[idx]
        p.master_adver_int = p.adver_int
        p.preempt_time = 0
        p.have_master = 0
        p.wants_master = 0
        p.down_reason = R_MASTER_DOWN_TIMER
        self._set_state(idx, S_BACKUP, reason)
        self._heap_set(idx, now + self._master_down(p))

    cdef bint _sync_held(self, int idx) noexcept:
        """keepalived vrrp_sync_can_goto_master, negated: a sync-group member
        goes MASTER only when its group is MASTER already or every other
        member wants MASTER too (its own down timer ran out, or it was
        configured `state MASTER` and has heard no master since): one member
        still hearing a better master holds the whole group in BACKUP."""
        cdef int j = self._inst[idx].sync_next
        cdef bint held = False
        while j != idx:
            if self._inst[j].state == S_MASTER:
                return False
            if not self._inst[j].wants_master:
                held = True
            j = self._inst[j].sync_next
        return held

    cdef void _sync_unlink(self, int idx) noexcept:
        cdef int j = idx
        while self._inst[j].sync_next != idx:
            j = self._inst[j].sync_next
        self._inst[j].sync_next = self._inst[idx].sync_next
        self._inst[idx].sync_next = idx

    def set_sync_group(self, list members):
        """The instances of one vrrp_sync_group: each leaves the group it was
        in and they form one (a single idx: in no group).  The engine uses it
        only to hold a member whose down timer ran out (_sync_held); moving
        the other members is the daemon's (force_state)."""
        members = list(dict.fromkeys(members))     # a member named twice is one member
        cdef int i, n = len(members)
        for i in range(n):
            self._get(members[i])
        for i in range(n):
            self._sync_unlink(members[i])
        for i in range(n):
            self._inst[<int>members[i]].sync_next = members[(i + 1) % n]

    cdef void _set_state(self, int idx, int state, int reason) noexcept:
        self._inst[idx].state = state
        self._ictr[<size_t>idx * NICTR + C_TO_INIT + state] += 1
        self._event(idx, E_STATE, state, reason, NULL, 0)

    cdef void _event(self, int idx, int kind, int a1, int a2,
                     const uint8_t* addr, int alen) noexcept:
        cdef ev_t* ev
        cdef int cap
        if self._ev_len == self._ev_cap:
            cap = self._ev_cap * 2
            if cap > EV_CAP_MAX:
                self._ev_dropped += 1
                return
            ev = <ev_t*>realloc(self._ev, cap * sizeof(ev_t))
            if not ev:
                self._ev_dropped += 1
                return
            self._ev = ev
            self._ev_cap = cap
        ev = &self._ev[self._ev_len]
        self._ev_len += 1
        ev.idx = idx
        ev.kind = kind
        ev.arg1 = a1
        ev.arg2 = a2
        ev.alen = alen
        if alen:
            memcpy(ev.addr, addr, alen)

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def pop_events(self, int max_events=0):
        """-> the oldest max_events (0: all) [Event] not yet popped (see EV_*).
        A takeover of thousands is handed out in slices, so its first
        instances' side effects need not wait for the last one's dispatch."""
        cdef list out = []
        cdef ev_t* ev
        cdef int i
        cdef int n = self._ev_len
        if 0 < max_events < n:
            n = max_events
        for i in range(n):
            ev = &self._ev[i]
            if ev.kind == E_STATE:
                out.append(_event(ev.idx, ev.kind, ev.arg1, ev.arg2))
            else:
                out.append(_event(ev.idx, ev.kind, ev.arg1,
                                  PyBytes_FromStringAndSize(<char*>ev.addr, ev.alen)
                                  if ev.alen else None))
        if n < self._ev_len:
            memmove(self._ev, &self._ev[n], (self._ev_len - n) * sizeof(ev_t))
        self._ev_len -= n
        return out

    # --- transmit --------------------------------------------------------
    cdef void _enqueue(self, int idx, bint zero) noexcept:
        cdef inst_t* p = &self._inst[idx]
        cdef sock_t* s = &self._socks[p.sock_id]
        cdef uint64_t* c = &self._ictr[<size_t>idx * NICTR]
        cdef int i, cap
        cdef out_t* q
        c[C_ADVERTS_SENT] += 1
        if zero:
            c[C_PRI0_SENT] += 1
        if s.outq_len + p.ndst > s.outq_cap:
            cap = max(64, s.outq_cap * 2, s.outq_len + p.ndst)
            q = <out_t*>realloc(s.outq, cap * sizeof(out_t))
            if not q:
                self._sctr[p.sock_id * NSCTR + S_TX_DROPPED] += p.ndst
                return
            s.outq = q
            s.outq_cap = cap
        for i in range(p.ndst):
            q = &s.outq[s.outq_len]
            s.outq_len += 1
            q.idx = idx
            q.dst_i = i
            q.zero = zero
            q.deferred = 0
        if not s.dirty:
            s.dirty = 1
            self._dirty[self._ndirty] = p.sock_id
            self._ndirty += 1

    def flush(self):
        """Send every queued advert now (one sendmmsg per socket)."""
        self._flush()

    cdef void _flush_unless_deferred(self) noexcept:
        if not self._deferred:
            self._flush()

    def tx_pending(self):
        """Sends waiting for room in a device queue (the daemon flushes again
        shortly while there are any)."""
        cdef int k, n = 0
        for k in range(self._ndirty):
            n += self._socks[self._dirty[k]].outq_len
        return n

    cdef void _flush(self) noexcept:
        cdef int k, sid, kept = 0
        cdef sock_t* s
        for k in range(self._ndirty):
            sid = self._dirty[k]
            s = &self._socks[sid]
            s.outq_len = self._flush_sock(sid)
            if s.outq_len and s.busy_flushes >= TX_BUSY_MAX:
                # A device that stays full (no carrier behind a qdisc): an
                # advert this late is no use any more.
                self._sctr[sid * NSCTR + S_TX_DROPPED] += s.outq_len
                s.outq_len = 0
            if s.outq_len:
                s.busy_flushes += 1
                self._dirty[kept] = sid
                kept += 1
            else:
                s.busy_flushes = 0
                s.dirty = 0
        self._ndirty = kept

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _flush_sock(self, int sid) noexcept:
        """Send sid's queue; -> how many sends the device deferred, which are
        left at the front of the queue in their order."""
        cdef sock_t* s = &self._socks[sid]
        cdef uint64_t* sc = &self._sctr[sid * NSCTR]
        cdef int n = s.outq_len
        cdef int i, m
        cdef out_t* q
        cdef inst_t* p
        cdef const uint8_t* pkt
        cdef mmsghdr* msgs = <mmsghdr*>self._msgs
        cdef iovec* iov = <iovec*>self._iov
        cdef msghdr* h
        cdef cmsghdr* cm
        cdef sockaddr_in* a4
        cdef sockaddr_in6* a6
        cdef in_pktinfo* pi4
        cdef in6_pktinfo* pi6
        if s.fd == FD_DISCARD:
            sc[S_TX_PACKETS] += n
            sc[S_TX_BATCHES] += 1
            return 0
        if s.fd == FD_CAPTURE:
            for i in range(n):
                q = &s.outq[i]
                p = &self._inst[q.idx]
                pkt = (p.pkts0 if q.zero else p.pkts) + q.dst_i * p.pkt_len
                try:
                    self._sent.append((sid,
                        PyBytes_FromStringAndSize(<char*>p.dsts + q.dst_i * p.alen, p.alen),
                        PyBytes_FromStringAndSize(<char*>pkt, p.pkt_len)))
                except MemoryError:
                    sc[S_TX_DROPPED] += 1
                    continue
                sc[S_TX_PACKETS] += 1
            sc[S_TX_BATCHES] += 1
            return 0
        # Two passes: multicast frames on the packet socket, then the rest
        # (unicast peers, or everything without one) on the raw socket.
        cdef int link, fd, k
        cdef bint busy
        # Every frame of this socket goes to the same place: one address for all.
        cdef sockaddr_ll ll
        memset(&ll, 0, sizeof(sockaddr_ll))
        ll.sll_family = AF_PACKET
        ll.sll_protocol = htons(0x0800 if s.family == AF_INET else 0x86dd)
        ll.sll_ifindex = s.ifindex
        for link in range(2):
            if link and s.link_fd < 0:
                break
            fd = s.link_fd if link else s.fd
            m = 0
            busy = False
            for i in range(n):
                q = &s.outq[i]
                p = &self._inst[q.idx]
                if (p.frame_hdr_len > 0) != (link == 1):
                    continue
                q.deferred = busy
                if busy:
                    continue
                self._msgq[m] = i
                pkt = (p.pkts0 if q.zero else p.pkts) + q.dst_i * p.pkt_len
                h = &msgs[m].msg_hdr
                h.msg_flags = 0
                h.msg_iov = &iov[m]
                h.msg_iovlen = 1
                if link:
                    iov[m].iov_base = <void*>(pkt - p.frame_hdr_len)
                    iov[m].iov_len = p.frame_hdr_len + p.pkt_len
                    h.msg_name = &ll
                    h.msg_namelen = sizeof(sockaddr_ll)
                    h.msg_control = NULL
                    h.msg_controllen = 0
                else:
                    iov[m].iov_base = <void*>pkt
                    iov[m].iov_len = p.pkt_len
                    h.msg_name = self._names + m * NAMELEN
                    h.msg_control = self._ctrl + m * CTRL
                    memset(h.msg_control, 0, CTRL)
                    # Source per instance via PKTINFO (it may differ per instance
                    # on one socket); the kernel adds the IP header and TTL 255.
                    if s.family == AF_INET:
                        a4 = <sockaddr_in*>h.msg_name
                        memset(a4, 0, sizeof(sockaddr_in))
                        a4.sin_family = AF_INET
                        memcpy(&a4.sin_addr, p.dsts + q.dst_i * 4, 4)
                        h.msg_namelen = sizeof(sockaddr_in)
                        h.msg_controllen = CMSG_SPACE(sizeof(in_pktinfo))
                        cm = CMSG_FIRSTHDR(h)
                        cm.cmsg_level = IPPROTO_IP
                        cm.cmsg_type = IP_PKTINFO
                        cm.cmsg_len = CMSG_LEN(sizeof(in_pktinfo))
                        pi4 = <in_pktinfo*>CMSG_DATA(cm)
                        pi4.ipi_ifindex = s.ifindex
                        memcpy(&pi4.ipi_spec_dst, p.src, 4)
                    else:
                        a6 = <sockaddr_in6*>h.msg_name
                        memset(a6, 0, sizeof(sockaddr_in6))
                        a6.sin6_family = AF_INET6
                        memcpy(a6.sin6_addr.s6_addr, p.dsts + q.dst_i * 16, 16)
                        a6.sin6_scope_id = s.ifindex
                        h.msg_namelen = sizeof(sockaddr_in6)
                        h.msg_controllen = CMSG_SPACE(sizeof(in6_pktinfo))
                        cm = CMSG_FIRSTHDR(h)
                        cm.cmsg_level = IPPROTO_IPV6
                        cm.cmsg_type = IPV6_PKTINFO
                        cm.cmsg_len = CMSG_LEN(sizeof(in6_pktinfo))
                        pi6 = <in6_pktinfo*>CMSG_DATA(cm)
                        pi6.ipi6_ifindex = s.ifindex
                        memcpy(pi6.ipi6_addr.s6_addr, p.src, 16)
                m += 1
                if m == TX_BATCH:
                    busy = self._send_batch(s, fd, m, sc)
                    m = 0
            if m:
                self._send_batch(s, fd, m, sc)
        k = 0
        for i in range(n):
            if s.outq[i].deferred:
                s.outq[k] = s.outq[i]
                k += 1
        return k

    cdef bint _send_batch(self, sock_t* s, int fd, int m, uint64_t* sc) noexcept:
        """Send the m messages built; those the device queue refused are
        marked deferred.  -> whether any were."""
        cdef int k = self._sendmmsg(fd, m, sc)
        cdef bint busy = k < m
        while k < m:
            s.outq[self._msgq[k]].deferred = 1
            k += 1
        return busy

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _sendmmsg(self, int fd, int m, uint64_t* sc) noexcept:
        """-> how many of the m messages were handled (sent, or failed and
        counted); the rest found the device queue full."""
        cdef mmsghdr* msgs = <mmsghdr*>self._msgs
        cdef int k = 0, r
        while k < m:
            # Without the GIL: the netlink sender thread of a takeover runs on
            # while the kernel takes a burst of adverts.
            with nogil:
                r = sendmmsg(fd, msgs + k, m - k, MSG_DONTWAIT)
            sc[S_TX_BATCHES] += 1
            if r < 0:
                if errno == EINTR:
                    continue
                if errno == ENOBUFS or errno == EAGAIN:
                    # A burst (a takeover of thousands) outran the device
                    # queue or veth ring: keep them for the next flush.
                    sc[S_TX_DEFERRED] += m - k
                    return k
                # This message failed (e.g. link down): count, skip it.
                sc[S_TX_ERRORS] += 1
                sc[S_LAST_ERRNO] = errno
                k += 1
            else:
                sc[S_TX_PACKETS] += r
                k += r
        return m

    def pop_sent(self):
        """Capture mode: -> [(sock_id, dst, payload)] sent since the last call."""
        out = self._sent
        self._sent = []
        return out

    # --- timer heap (indexed: one entry per instance, no stale entries) -------
    cdef void _heap_set(self, int idx, int64_t deadline) noexcept:
        self._inst[idx].deadline = deadline
        cdef int pos = self._hpos[idx]
        if pos < 0:
            pos = self._heap_len
            self._heap_len += 1
        self._heap[pos].deadline = deadline
        self._heap[pos].idx = idx
        self._sift_down(self._sift_up(pos))

    cdef void _heap_remove(self, int idx) noexcept:
        cdef int pos = self._hpos[idx]
        if pos < 0:
            return
        self._hpos[idx] = -1
        self._heap_len -= 1
        if pos == self._heap_len:
            return
        self._heap[pos] = self._heap[self._heap_len]
        self._sift_down(self._sift_up(pos))

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _sift_up(self, int pos) noexcept:
        """Moves heap[pos] up to its place; returns where it ended."""
        cdef deadline_t* h = self._heap
        cdef deadline_t t = h[pos]
        cdef int parent
        while pos > 0:
            parent = (pos - 1) >> 1
            if h[parent].deadline <= t.deadline:
                break
            h[pos] = h[parent]
            self._hpos[h[pos].idx] = pos
            pos = parent
        h[pos] = t
        self._hpos[t.idx] = pos
        return pos

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _sift_down(self, int pos) noexcept:
        cdef deadline_t* h = self._heap
        cdef int n = self._heap_len
        cdef deadline_t t = h[pos]
        cdef int child
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            if child + 1 < n and h[child + 1].deadline < h[child].deadline:
                child += 1
            if h[child].deadline >= t.deadline:
                break
            h[pos] = h[child]
            self._hpos[h[pos].idx] = pos
            pos = child
        h[pos] = t
        self._hpos[t.idx] = pos

    # --- introspection ---------------------------------------------------
    def state(self, int idx):
        return self._get(idx).state

    def priority(self, int idx):
        return self._get(idx).priority

    def master_address(self, int idx):
        """Packed address of the current master (ours when MASTER), or None."""
        cdef inst_t* p = self._get(idx)
        if not p.have_master:
            return None
        return PyBytes_FromStringAndSize(<char*>p.master_addr, p.alen)

    def master_adver_int_us(self, int idx):
        return self._get(idx).master_adver_int

    def deadline(self, int idx):
        """This instance's timer (advert or master down), or -1."""
        cdef inst_t* p = self._get(idx)
        return p.deadline if self._hpos[idx] >= 0 else -1

    def counters(self, int idx):
        cdef inst_t* p = self._get(idx)
        return _counter_dict(&self._ictr[<size_t>idx * NICTR], _ICTR_NAMES, C_REJECT)

    def socket_counters(self, int sock_id):
        if sock_id < 0 or sock_id >= self._nsocks:
            raise ValueError(f"no socket {sock_id}")
        return _counter_dict(&self._sctr[sock_id * NSCTR], _SCTR_NAMES, S_REJECT)

    def stats(self):
        """Engine-wide: instances in use, armed timers, events dropped."""
        return {"instances": self._max - self._nfree, "timers": self._heap_len,
                "events_dropped": self._ev_dropped, "sockets": self._nsocks}
