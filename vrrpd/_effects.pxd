# Typed contract of the transition side effects (code in pyx/_effects.pyx).
#
# What a transition does besides the protocol, prebuilt per instance when it
# is added (or its VIPs, name or links change), so that a takeover of
# thousands of instances only copies bytes: the rtnetlink messages that add
# and remove its VIPs, its gratuitous ARP / unsolicited NA frames, and the
# name its notify-fifo lines carry.  Indexed by the engine's instance index.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t
from vrrpd._sys cimport iovec, mmsghdr

cdef struct prebuilt_t:
    uint8_t* nl_add             # one RTM_NEWADDR per VIP, concatenated
    uint8_t* nl_del             # one RTM_DELADDR per VIP, same order
    uint32_t nl_add_len
    uint32_t nl_del_len
    uint32_t nmsgs              # messages in each of nl_add / nl_del
    uint8_t* frames             # announcements: per frame u16 length, u16 socket slot, bytes
    uint32_t frames_len
    uint32_t nframes
    uint32_t repeat             # rounds over all frames per burst (garp_master_repeat)
    uint32_t gen                # bumped when the instance enters or leaves MASTER
    uint8_t* name               # '"VI_1"' as the fifo line quotes it
    uint32_t name_len
    uint8_t vips_on             # its VIPs were added by a batch and not removed since

cdef class Effects:
    cdef prebuilt_t* _pb
    cdef int _max
    cdef int* _fds              # socket slot -> packet socket fd
    cdef int _nfds
    cdef unsigned long _sent
    cdef unsigned long _deferred
    cdef unsigned long _errors

    cdef prebuilt_t* _get(self, int idx) except NULL

# A notify fifo as the netlink sender thread sees it (fields read and
# written atomically by both threads).
cdef class FifoGate:
    cdef int _fd                # -1 once closed
    cdef int _blocked           # the loop's writer has lines queued
    cdef int _owed              # moves that left lines for the loop to write

cdef class VipMove

# What follows each instance's VIPs in the sender thread: its first GARP/NA
# burst and its notify-fifo lines, copied from the prebuilt bytes when the
# move is made (without a move: one burst of Effects.announce).  Positions
# are indexes into the instances' list.
cdef class Followup:
    cdef int _n                 # instances
    cdef int _ready             # instances announced and reported so far
    cdef uint32_t* _msg_end     # position -> one past its last message
    cdef uint8_t* _frames       # as prebuilt_t.frames, the instances' one after another
    cdef uint32_t* _fr_off      # position -> its frames; [_n] is the end
    cdef uint32_t* _repeat      # position -> rounds per burst
    cdef int* _fds              # socket slot -> packet socket fd, when the move was made
    cdef int _nfds
    cdef uint8_t* _refused      # socket slot -> refused a frame (the rest waits too)
    cdef uint8_t* _left         # refused frames: u16 length, u16 slot, bytes
    cdef uint32_t _left_len
    cdef uint32_t _left_cap
    cdef uint8_t* _lines        # the fifo lines, one per position
    cdef uint32_t* _ln_off      # position -> its line; [_n] is the end
    cdef bint _long_lines       # one is over PIPE_BUF: the loop writes them all
    cdef list _gates            # FifoGate, kept alive while the thread writes
    cdef int _ngates
    cdef int** _gate_fd         # per gate: its FifoGate's fields
    cdef int** _gate_blocked
    cdef int** _gate_owed
    cdef int* _gate_from        # per gate: first position left to the loop (-1: none)
    cdef int* _gate_lines       # per gate: lines written
    cdef int* _gate_errors      # per gate: writes that failed (not "pipe full")
    cdef unsigned long _sent
    cdef unsigned long _deferred
    cdef unsigned long _errors

    cdef _build(self, Effects fx, list idxs, VipMove move, bint announce, list words,
                list priorities, list gates)
    cdef int run(self, const int32_t* err, int upto, bint final) noexcept nogil
    cdef int _announce(self, int a, int b) noexcept nogil
    cdef int _send(self, mmsghdr* msgs, iovec* iov, int m, int slot) noexcept nogil
    cdef int _keep(self, const uint8_t* frame, int length, int slot) noexcept nogil
    cdef int _block_end(self, int s, int b) noexcept nogil
    cdef int _report(self, int a, int b) noexcept nogil

# A batch of instances' VIP messages on its way through rtnetlink (Effects.vip_move),
# owned by the sender thread during exchange().
cdef class VipMove:
    cdef uint8_t* _buf          # the messages, concatenated
    cdef uint32_t* _off         # message k starts at _off[k]; _off[count] is the end
    cdef int32_t* _owner        # message k -> position in idxs
    cdef int32_t* _err          # message k -> errno (-1: not answered yet)
    cdef readonly int count     # messages
    cdef readonly int acked     # messages answered (by an error or a closing ACK)
    cdef readonly list idxs     # the instances, in order
    cdef readonly bint add      # adding (else removing) their VIPs
    cdef readonly Followup followup     # None: the loop announces and reports them

    cdef int _alloc(self, uint32_t length, int count) except -1
    cdef int _missing_sent(self) noexcept nogil
    cdef uint16_t* _flags(self, int k) noexcept nogil
    cdef int _drain(self, int fd, uint8_t* rbuf, uint32_t seq0) noexcept nogil
