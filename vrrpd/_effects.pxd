# Typed contract of the transition side effects (code in pyx/_effects.pyx).
#
# What a transition does besides the protocol, prebuilt per instance when it
# is added (or its VIPs, name or links change), so that a takeover of
# thousands of instances only copies bytes: the rtnetlink messages that add
# and remove its VIPs, its gratuitous ARP / unsolicited NA frames, and the
# name its notify-fifo lines carry.  Indexed by the engine's instance index.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t

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

# A batch of instances' VIP messages on its way through rtnetlink (Effects.vip_move),
# owned by the sender thread during exchange().
cdef class VipMove:
    cdef uint8_t* _buf          # the messages, concatenated
    cdef uint32_t* _off         # message k starts at _off[k]; _off[count] is the end
    cdef int32_t* _owner        # message k -> position in idxs
    cdef int32_t* _err          # message k -> errno (-1: no ACK yet)
    cdef readonly int count     # messages
    cdef readonly int acked     # ACKs recorded
    cdef readonly list idxs     # the instances, in order
    cdef readonly bint add      # adding (else removing) their VIPs

    cdef int _alloc(self, uint32_t length, int count) except -1
    cdef int _missing_sent(self) noexcept nogil
    cdef int _drain(self, int fd, uint8_t* rbuf, uint32_t seq0) noexcept nogil
