# Typed contract of the VRRP wire codec (code in pyx/_codec.pyx).
# The engine cimports exactly this; nothing else in _codec is public to C.
from libc.stdint cimport uint8_t, uint16_t, uint32_t

# Every reason a received packet can be rejected for, in one numbering so the
# engine can count them in flat arrays.  The codec decides the packet-level
# ones (RFC 5798 7.1 checks doable from the bytes); the engine the rest.
cdef enum Reject:
    REJECT_NONE = 0
    REJECT_TOO_SHORT            # shorter than the fixed header
    REJECT_BAD_VERSION          # version field not 2 or 3
    REJECT_BAD_TYPE             # type field not 1 (ADVERTISEMENT)
    REJECT_BAD_LENGTH           # length disagrees with count of addresses
    REJECT_BAD_CHECKSUM         # neither checksum variant matches
    REJECT_ZERO_ADVERT_INT      # advert interval 0
    REJECT_AUTH_AH              # v2 auth type 2 (IP AH), RFC 3768 dropped it
    REJECT_BAD_AUTH_TYPE        # v2 auth type other than 0/1/2
    REJECT_V2_IPV6              # version 2 is IPv4 only
    # --- engine-level reasons (need configuration or socket metadata) ---
    REJECT_BAD_TTL              # IPv4 TTL / IPv6 hop limit not 255 (RFC 5798 7.1)
    REJECT_UNKNOWN_VRID         # no instance for (interface, family, VRID)
    REJECT_VERSION_MISMATCH     # version differs from the instance's
    REJECT_AUTH_MISMATCH        # v2 auth type or password differs
    REJECT_ADVERT_INT_MISMATCH  # v2: interval differs from configured (RFC 3768 7.1)
    REJECT_ADDR_MISMATCH        # address list differs (counted; keepalived accepts unless strict)
    REJECT_OWN_ADVERT           # our own advert looped back
    REJECT_UNICAST_UNKNOWN_PEER # unicast advert from an address not in unicast_peer
    REJECT_COUNT                # number of reasons; keep last

# How the checksum of an accepted packet was computed.
cdef enum ChecksumKind:
    CKSUM_V2 = 0                # v2: over the VRRP message only
    CKSUM_V3_PSEUDO = 1         # v3 with IPv4/IPv6 pseudo-header (RFC 5798 5.2.8)
    CKSUM_V3_NO_PSEUDO = 2      # v3 IPv4 without pseudo-header (keepalived v3_checksum_as_v2)

cdef struct advert_t:
    uint8_t version
    uint8_t vrid
    uint8_t priority
    uint8_t naddr             # count of addresses
    uint8_t auth_type         # v2 only, else 0
    uint8_t checksum_kind     # ChecksumKind that matched
    uint16_t advert_int       # raw field: v2 seconds, v3 centiseconds
    uint16_t checksum
    uint16_t length           # bytes of VRRP message used (header+addrs+auth)
    int family                # AF_INET / AF_INET6
    const uint8_t* addrs      # naddr * (4|16) bytes, pointing into the packet
    const uint8_t* auth_data  # 8 bytes (v2 auth type 1) or NULL

# Internet checksum (RFC 1071) of buf, folded, not inverted, starting from sum.
# csum_add adds buf's big-endian 16-bit words to sum (an odd last byte is
# zero padded, so chain only even-length pieces before the last); csum_fold
# folds the carries into 16 bits.  The checksum field is ~csum_fold(s) &
# 0xffff; a message with a correct checksum has csum_fold(s) == 0xffff.
cdef uint32_t csum_add(uint32_t sum, const uint8_t* buf, size_t n) noexcept nogil
cdef uint16_t csum_fold(uint32_t sum) noexcept nogil

# Decode and validate one VRRP message (the IP payload).  src/dst are the
# packed IP source/destination (4 or 16 bytes) for the v3 pseudo-header.
# Returns REJECT_NONE and fills out, or a Reject reason.  Never reads past
# pkt[length-1]; never raises.  length must be exactly the message length
# (trailing bytes are REJECT_BAD_LENGTH, as keepalived).  With src or dst
# NULL a v3 packet can only match CKSUM_V3_NO_PSEUDO (IPv4).
cdef int decode_advert(const uint8_t* pkt, size_t length, int family,
                       const uint8_t* src, const uint8_t* dst,
                       advert_t* out) noexcept nogil

# Encode one advert into buf (capacity cap).  Returns its length, or -1 when
# it does not fit or arguments are invalid.  v3_checksum_as_v2 only matters
# for v3 over IPv4.
cdef int encode_advert(uint8_t* buf, size_t cap, int version, int family,
                       uint8_t vrid, uint8_t priority, uint16_t advert_int,
                       const uint8_t* addrs, uint8_t naddr,
                       uint8_t auth_type, const uint8_t* auth_data,
                       const uint8_t* src, const uint8_t* dst,
                       bint v3_checksum_as_v2) noexcept nogil

# Set the priority of an already encoded advert in place, updating the
# checksum incrementally (RFC 1624) for any checksum kind: used when tracking
# moves priority and for the priority-0 advert, without re-encoding.
cdef void patch_priority(uint8_t* buf, uint8_t priority) noexcept nogil

# The Ethernet and IP headers of an advert sent as a whole frame on a packet
# socket (the engine's link-layer transmit path).  dst must be a multicast
# group; its MAC follows RFC 1112 6.4 / RFC 2464 7.  IPv4: TOS 0xc0 (network
# control, as keepalived), DF with ID 0 (RFC 6864 atomic datagram: the header
# never changes), TTL 255; IPv6: traffic class 0xc0, flow label 0, hop limit
# 255 (RFC 5798 5.1.1.3 / 5.1.2.3).  Returns the header length (34 or 54), or
# -1 when cap is too small or the arguments are invalid.
cdef int encode_frame_header(uint8_t* buf, size_t cap, int family,
                             const uint8_t* src_mac, const uint8_t* src,
                             const uint8_t* dst, uint16_t payload_len) noexcept nogil
