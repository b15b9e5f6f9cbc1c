# Typed contract of the VRRP protocol engine (code in pyx/_engine.pyx).
#
# Everything per instance lives in flat C arrays indexed by the instance
# index ("idx"); Python sees only the def methods of Engine.  Time is injected:
# every entry point takes `now`, monotonic microseconds.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t, int64_t, uint64_t
from vrrpd._codec cimport advert_t

# One VRRP instance (virtual router on one socket).  RFC 5798 6.1 / 6.4 state.
cdef struct inst_t:
    uint8_t used
    uint8_t state               # INIT/BACKUP/MASTER/FAULT (keepalived numbering)
    uint8_t version             # 2 or 3
    uint8_t vrid
    uint8_t priority            # effective priority (tracking applied)
    uint8_t preempt             # 0 = nopreempt
    uint8_t owner               # address owner (255): may go MASTER at once
    uint8_t want_master         # configured `state MASTER`
    uint8_t faulted             # fault asserted by the daemon
    uint8_t auth_type           # v2 only: 0 none, 1 simple password
    uint8_t v3_as_v2            # v3 IPv4 checksum without pseudo-header
    uint8_t multicast           # dsts is the multicast group, not peers
    uint8_t peers_only          # unicast: accept adverts only from dsts
    uint8_t naddr               # number of VIPs in the advert
    uint8_t alen                # address length, 4 or 16
    uint8_t down_reason         # reason to report when the down timer fires
    uint8_t master_priority     # last priority heard from the master
    uint8_t have_master         # master_addr is valid
    uint8_t down_timer_adverts  # adverts missed before Master_Down (3)
    uint8_t lower_prio_no_advert    # MASTER: no advert in answer to a lower one
    uint8_t higher_prio_send_advert # MASTER: one advert before yielding to a higher one
    uint8_t skip_check_adv_addr     # no address-list check while the master is the same
    uint8_t wants_master        # keepalived's wantstate == MASTER (sync groups wait for all)
    uint8_t phase_pending       # MASTER: the next advert's timer takes the instance's phase
    int32_t sync_next           # next member of its sync group's ring; idx itself: none
    int family
    int sock_id
    int ndst
    uint16_t advert_field       # advert interval as sent: v2 s, v3 cs
    uint16_t pkt_len            # length of each encoded advert
    int64_t adver_int           # configured Advertisement_Interval, us
    int64_t master_adver_int    # Master_Adver_Interval, us (v3: learned)
    int64_t preempt_delay       # us, 0 = none
    int64_t preempt_time        # us; 0 = preempt delay not running
    int64_t deadline            # next advert (MASTER) or master down (BACKUP)
    uint8_t src[16]             # primary address: source of our adverts
    uint8_t master_addr[16]     # current master's address
    uint8_t auth_data[8]
    uint8_t* vips               # naddr * alen
    uint8_t* dsts               # ndst * alen
    uint8_t* pkts               # ndst * pkt_len: adverts at current priority
    uint8_t* pkts0              # ndst * pkt_len: the same with priority 0
    uint8_t frame_hdr_len       # > 0: sent as a frame on the socket's link_fd, its
                                # Ethernet + IP headers just before pkts / pkts0

# A timer heap entry: the deadline is copied in, so sifting reads only the
# heap array (the instances are far apart in memory; see Engine._heap).
cdef struct deadline_t:
    int64_t deadline
    int32_t idx

# A queued transmission: advert of instance idx to its dst_i'th destination.
cdef struct out_t:
    int32_t idx
    int32_t dst_i
    uint8_t zero                # send the priority-0 variant
    uint8_t deferred            # the device queue was full: try again at the next flush

# One raw socket (interface + family), or a test sink (fd -1 capture, -2 discard).
cdef struct sock_t:
    uint8_t used
    uint8_t dirty               # has queued sends, listed in Engine._dirty
    int fd
    int link_fd                 # packet socket for multicast frames, -1 = none
    int family
    int ifindex
    uint8_t link_mac[6]         # the interface's MAC, source of those frames
    int32_t vrid_map[256]       # VRID -> idx + 1 (0: no instance)
    out_t* outq
    int outq_len
    int outq_cap
    int busy_flushes            # flushes in a row that left sends deferred
    double tokens               # rate limit for reject events
    int64_t tokens_at

# A rare event for the daemon (state change, lower-priority advert, reject).
cdef struct ev_t:
    int32_t idx
    int32_t kind
    int32_t arg1
    int32_t arg2
    uint8_t alen
    uint8_t addr[16]


cdef class Engine:
    cdef inst_t* _inst
    cdef int _max
    cdef bint _deferred             # queue API-triggered adverts until tick()/flush()
    cdef int* _free                 # stack of free instance slots
    cdef int _nfree
    cdef uint64_t* _ictr            # _max * NICTR counters
    cdef sock_t* _socks
    cdef uint64_t* _sctr            # per socket NSCTR counters
    cdef int _nsocks
    cdef int* _dirty
    cdef int _ndirty
    cdef deadline_t* _heap             # indexed min-heap of instances by deadline
    cdef int* _hpos                 # idx -> position in _heap, -1 = no timer
    cdef int _heap_len
    cdef ev_t* _ev
    cdef int _ev_len
    cdef int _ev_cap
    cdef uint64_t _ev_dropped
    cdef list _sent                 # capture-mode transmissions
    # syscall scratch (one batch, reused)
    cdef void* _msgs
    cdef void* _iov
    cdef int* _msgq                 # outq position of each message in the batch
    cdef uint8_t* _names
    cdef uint8_t* _ctrl
    cdef uint8_t* _rxbuf

    cdef inst_t* _get(self, int idx) except NULL
    cdef int _reencode(self, inst_t* p, int field, const uint8_t* addrs, int naddr) except -1
    cdef void _free_bufs(self, inst_t* p) noexcept
    cdef void _drop_queued(self, int idx) noexcept
    cdef void _heap_set(self, int idx, int64_t deadline) noexcept
    cdef void _heap_remove(self, int idx) noexcept
    cdef int _sift_up(self, int pos) noexcept
    cdef void _sift_down(self, int pos) noexcept
    cdef void _event(self, int idx, int kind, int a1, int a2,
                     const uint8_t* addr, int alen) noexcept
    cdef void _set_state(self, int idx, int state, int reason) noexcept
    cdef void _enqueue(self, int idx, bint zero) noexcept
    cdef void _flush_unless_deferred(self) noexcept
    cdef void _flush(self) noexcept
    cdef int _flush_sock(self, int sid) noexcept
    cdef bint _send_batch(self, sock_t* s, int fd, int m, uint64_t* sc) noexcept
    cdef int _sendmmsg(self, int fd, int m, uint64_t* sc) noexcept
    cdef void _frame_header(self, inst_t* p) noexcept
    cdef int64_t _skew_pri(self, inst_t* p, int prio) noexcept
    cdef int64_t _skew(self, inst_t* p) noexcept
    cdef int64_t _master_down(self, inst_t* p) noexcept
    cdef void _become_master(self, int idx, int64_t base, int64_t now, int reason) noexcept
    cdef void _become_backup(self, int idx, int64_t now, int reason) noexcept
    cdef bint _sync_held(self, int idx) noexcept
    cdef void _sync_unlink(self, int idx) noexcept
    cdef void _reject(self, int sid, int idx, int reason, const uint8_t* src,
                      int64_t now) noexcept
    cdef void _dispatch(self, int sid, const uint8_t* pkt, size_t n,
                        const uint8_t* src, const uint8_t* dst, int ttl,
                        int64_t now) noexcept
    cdef void _on_advert(self, int idx, advert_t* adv, const uint8_t* src,
                         int64_t now) noexcept
    cdef void _rx_one(self, int sid, int i, int64_t now) noexcept
