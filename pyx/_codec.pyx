# cython: language_level=3
"""VRRP wire codec: VRRPv2 (RFC 3768) and VRRPv3 (RFC 5798 / RFC 9568).

The C layer (contract in vrrpd/_codec.pxd) works on raw pointers and never
raises; the engine calls it per packet.  Below it sits a small Python API
(encode, decode, decode_batch, encode_batch) for the rest of vrrpd, tests and
benchmarks.

Message layout (both versions share the first 4 bytes and the checksum slot):

    0        version(4) | type(4)          type 1 = ADVERTISEMENT
    1        VRID
    2        priority
    3        count of addresses
    4..5     v2: auth type(8), adver int(8, seconds)
             v3: reserved(4), max adver int(12, centiseconds)
    6..7     checksum
    8..      count * 4 (IPv4) or 16 (IPv6) address bytes
             v2 only: 8 bytes of authentication data
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

import socket

cdef extern from "<sys/socket.h>":
    enum:
        AF_INET
        AF_INET6

cdef enum:
    HDR_LEN = 8             # fixed header, RFC 5798 5.1 / RFC 3768 5.1
    AUTH_LEN = 8            # v2 authentication data, RFC 3768 5.3.10
    VRRP_TYPE_ADVERT = 1    # the only type defined (RFC 5798 5.2.2)
    IPPROTO_VRRP = 112
    AUTH_NONE = 0
    AUTH_PASS = 1           # RFC 2338 simple text password, kept by keepalived
    AUTH_AH = 2             # RFC 2338 IP AH, removed by RFC 3768
    MAX_MSG_LEN = HDR_LEN + 255 * 16 + AUTH_LEN
    ETH_HLEN = 14
    IP4_HLEN = 20
    IP6_HLEN = 40
    ETHERTYPE_IP = 0x0800
    ETHERTYPE_IPV6 = 0x86dd
    IPTOS_NETCONTROL = 0xc0 # keepalived's TOS / traffic class for adverts


# ---------------------------------------------------------------- checksums

@cython.boundscheck(False)
@cython.wraparound(False)
cdef uint32_t csum_add(uint32_t sum, const uint8_t* buf, size_t n) noexcept nogil:
    # Sum of big-endian 16-bit words (RFC 1071 4.1); an odd last byte is
    # padded with a zero.  Chained calls must pass even n except the last.
    cdef uint64_t acc = sum
    cdef size_t i = 0
    while i + 1 < n:
        acc += (<uint32_t>buf[i] << 8) | buf[i + 1]
        i += 2
    if n & 1:
        acc += <uint32_t>buf[n - 1] << 8
    # Fold the 64-bit accumulator so the uint32 result carries no overflow.
    while acc >> 32:
        acc = <uint32_t>acc + (acc >> 32)
    return <uint32_t>acc


cdef uint16_t csum_fold(uint32_t sum) noexcept nogil:
    while sum >> 16:
        sum = (sum & 0xffff) + (sum >> 16)
    return <uint16_t>sum


cdef inline size_t addr_len(int family) noexcept nogil:
    return 4 if family == AF_INET else 16


cdef inline uint32_t pseudo_sum(int family, const uint8_t* src, const uint8_t* dst,
                                size_t length) noexcept nogil:
    # RFC 5798 5.2.8: the IPv4 pseudo-header (RFC 768: src, dst, zero,
    # protocol, 16-bit length) and the IPv6 one (RFC 8200 8.1: src, dst,
    # 32-bit upper-layer length, zeros, next header) sum to the same words.
    cdef size_t alen = addr_len(family)
    cdef uint32_t s = csum_add(0, src, alen)
    s = csum_add(s, dst, alen)
    return s + IPPROTO_VRRP + <uint32_t>length


cdef inline uint16_t get16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline void put16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xff


# ------------------------------------------------------------ decode (C API)

@cython.boundscheck(False)
@cython.wraparound(False)
cdef int decode_advert(const uint8_t* pkt, size_t length, int family,
                       const uint8_t* src, const uint8_t* dst,
                       advert_t* out) noexcept nogil:
    # Checks in RFC 5798 7.1 order where the bytes allow it.  The length check
    # precedes every read past the fixed header, so nothing is read beyond
    # pkt[length-1].
    cdef int version, alen
    cdef size_t need
    cdef uint32_t s
    if length < HDR_LEN:
        return REJECT_TOO_SHORT
    version = pkt[0] >> 4
    if version != 2 and version != 3:
        return REJECT_BAD_VERSION
    if (pkt[0] & 0x0f) != VRRP_TYPE_ADVERT:
        return REJECT_BAD_TYPE
    if family != AF_INET and family != AF_INET6:
        return REJECT_BAD_VERSION   # no VRRP version is defined over it
    if version == 2 and family == AF_INET6:
        return REJECT_V2_IPV6       # RFC 3768 is IPv4 only
    alen = addr_len(family)
    need = HDR_LEN + <size_t>pkt[3] * alen + (AUTH_LEN if version == 2 else 0)
    # Exact length, as keepalived (vrrp_check_packet: "vrrp packet too
    # long/short"): trailing bytes would sit outside the checksum of the
    # message they claim to belong to, so they are not silently ignored.
    if length != need:
        return REJECT_BAD_LENGTH

    # Checksum (RFC 3768 5.3.8, RFC 5798 5.2.8): a correct one sums to 0xffff.
    s = csum_add(0, pkt, need)
    if version == 2:
        if csum_fold(s) != 0xffff:
            return REJECT_BAD_CHECKSUM
        out.checksum_kind = CKSUM_V2
    elif src != NULL and dst != NULL and \
            csum_fold(s + pseudo_sum(family, src, dst, need)) == 0xffff:
        out.checksum_kind = CKSUM_V3_PSEUDO
    elif family == AF_INET and csum_fold(s) == 0xffff:
        # Peers configured like keepalived's v3_checksum_as_v2 (and some old
        # implementations) leave the pseudo-header out over IPv4.
        out.checksum_kind = CKSUM_V3_NO_PSEUDO
    else:
        return REJECT_BAD_CHECKSUM

    if version == 2:
        if pkt[4] == AUTH_AH:
            return REJECT_AUTH_AH
        if pkt[4] > AUTH_PASS:
            return REJECT_BAD_AUTH_TYPE
        out.auth_type = pkt[4]
        out.advert_int = pkt[5]
        out.auth_data = pkt + need - AUTH_LEN if pkt[4] == AUTH_PASS else NULL
    else:
        out.auth_type = AUTH_NONE
        out.advert_int = get16(pkt + 4) & 0x0fff   # top 4 bits reserved, ignored
        out.auth_data = NULL
    if out.advert_int == 0:
        return REJECT_ZERO_ADVERT_INT

    out.version = version
    out.vrid = pkt[1]
    out.priority = pkt[2]
    out.naddr = pkt[3]
    out.checksum = get16(pkt + 6)
    out.length = need
    out.family = family
    out.addrs = pkt + HDR_LEN
    return REJECT_NONE


# ------------------------------------------------------------ encode (C API)

@cython.boundscheck(False)
@cython.wraparound(False)
cdef int encode_advert(uint8_t* buf, size_t cap, int version, int family,
                       uint8_t vrid, uint8_t priority, uint16_t advert_int,
                       const uint8_t* addrs, uint8_t naddr,
                       uint8_t auth_type, const uint8_t* auth_data,
                       const uint8_t* src, const uint8_t* dst,
                       bint v3_checksum_as_v2) noexcept nogil:
    cdef size_t alen, n, length
    cdef uint32_t s
    if family != AF_INET and family != AF_INET6:
        return -1
    if version == 2:
        # 8-bit seconds; we send no AH (RFC 3768 removed it).
        if family != AF_INET or advert_int == 0 or advert_int > 255 or auth_type > AUTH_PASS:
            return -1
    elif version == 3:
        # 12-bit centiseconds (RFC 5798 5.2.7).
        if advert_int == 0 or advert_int > 0x0fff:
            return -1
        if (src == NULL or dst == NULL) and not (v3_checksum_as_v2 and family == AF_INET):
            return -1
    else:
        return -1
    if naddr and addrs == NULL:
        return -1
    alen = addr_len(family)
    n = <size_t>naddr * alen
    length = HDR_LEN + n + (AUTH_LEN if version == 2 else 0)
    if length > cap:
        return -1

    buf[0] = (version << 4) | VRRP_TYPE_ADVERT
    buf[1] = vrid
    buf[2] = priority
    buf[3] = naddr
    if version == 2:
        buf[4] = auth_type
        buf[5] = <uint8_t>advert_int
    else:
        put16(buf + 4, advert_int)      # reserved bits zero on send
    buf[6] = 0
    buf[7] = 0
    if n:
        memcpy(buf + HDR_LEN, addrs, n)
    if version == 2:
        # Type 0 sends zeros; type 1 the password, zero padded by the caller.
        if auth_type == AUTH_PASS and auth_data != NULL:
            memcpy(buf + HDR_LEN + n, auth_data, AUTH_LEN)
        else:
            memset(buf + HDR_LEN + n, 0, AUTH_LEN)

    s = csum_add(0, buf, length)
    if version == 3 and not (v3_checksum_as_v2 and family == AF_INET):
        s += pseudo_sum(family, src, dst, length)
    put16(buf + 6, ~csum_fold(s) & 0xffff)
    return <int>length


cdef void patch_priority(uint8_t* buf, uint8_t priority) noexcept nogil:
    # RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), with m the 16-bit word holding
    # priority and count.  The pseudo-header is unchanged, so this holds for
    # every checksum kind.
    cdef uint16_t old_word = get16(buf + 2)
    cdef uint16_t new_word = (<uint16_t>priority << 8) | buf[3]
    cdef uint32_t s = (~get16(buf + 6) & 0xffff) + (~old_word & 0xffff) + new_word
    buf[2] = priority
    put16(buf + 6, ~csum_fold(s) & 0xffff)


cdef int encode_frame_header(uint8_t* buf, size_t cap, int family,
                             const uint8_t* src_mac, const uint8_t* src,
                             const uint8_t* dst, uint16_t payload_len) noexcept nogil:
    cdef uint8_t* ip = buf + ETH_HLEN
    if family == AF_INET:
        if cap < ETH_HLEN + IP4_HLEN or (dst[0] & 0xf0) != 0xe0:
            return -1
        buf[0], buf[1], buf[2] = 0x01, 0x00, 0x5e
        buf[3], buf[4], buf[5] = dst[1] & 0x7f, dst[2], dst[3]
        put16(buf + 12, ETHERTYPE_IP)
        ip[0] = 0x45                    # version 4, 5 words
        ip[1] = IPTOS_NETCONTROL
        put16(ip + 2, IP4_HLEN + payload_len)
        put16(ip + 4, 0)                # ID
        put16(ip + 6, 0x4000)           # DF, fragment offset 0
        ip[8] = 255
        ip[9] = IPPROTO_VRRP
        put16(ip + 10, 0)
        memcpy(ip + 12, src, 4)
        memcpy(ip + 16, dst, 4)
        put16(ip + 10, ~csum_fold(csum_add(0, ip, IP4_HLEN)) & 0xffff)
        memcpy(buf + 6, src_mac, 6)
        return ETH_HLEN + IP4_HLEN
    if family == AF_INET6:
        if cap < ETH_HLEN + IP6_HLEN or dst[0] != 0xff:
            return -1
        buf[0], buf[1] = 0x33, 0x33
        memcpy(buf + 2, dst + 12, 4)
        put16(buf + 12, ETHERTYPE_IPV6)
        ip[0] = 0x60 | (IPTOS_NETCONTROL >> 4)
        ip[1] = (IPTOS_NETCONTROL & 0x0f) << 4
        ip[2] = 0
        ip[3] = 0
        put16(ip + 4, payload_len)
        ip[6] = IPPROTO_VRRP
        ip[7] = 255
        memcpy(ip + 8, src, 16)
        memcpy(ip + 24, dst, 16)
        memcpy(buf + 6, src_mac, 6)
        return ETH_HLEN + IP6_HLEN
    return -1


# ---------------------------------------------------------------- Python API

# Names for counters and metrics, indexed by Reject code.
REJECT_NAMES = (
    "none", "too_short", "bad_version", "bad_type", "bad_length", "bad_checksum",
    "zero_advert_int", "auth_ah", "bad_auth_type", "v2_ipv6",
    "bad_ttl", "unknown_vrid", "version_mismatch", "auth_mismatch",
    "advert_int_mismatch", "addr_mismatch", "own_advert", "unicast_unknown_peer",
)
assert len(REJECT_NAMES) == REJECT_COUNT

# Names indexed by ChecksumKind.
CHECKSUM_KIND_NAMES = ("v2", "v3_pseudo", "v3_no_pseudo")

CKSUM_V2_KIND = CKSUM_V2
CKSUM_V3_PSEUDO_KIND = CKSUM_V3_PSEUDO
CKSUM_V3_NO_PSEUDO_KIND = CKSUM_V3_NO_PSEUDO


cdef bytes packed(object addr, int family):
    """An address given as str or packed bytes, as packed bytes of its family."""
    cdef bytes b
    if type(addr) is bytes and len(<bytes>addr) == <Py_ssize_t>addr_len(family):
        return <bytes>addr
    if isinstance(addr, str):
        return socket.inet_pton(family, addr)
    b = bytes(addr)
    if len(b) != <Py_ssize_t>addr_len(family):
        raise ValueError(f"packed address of {len(b)} bytes for family {family}")
    return b


cdef int check_family(int family) except -1:
    if family != AF_INET and family != AF_INET6:
        raise ValueError(f"family must be AF_INET or AF_INET6, not {family}")
    return 0


cdef class Advert:
    """An accepted advertisement (fields as on the wire)."""
    cdef readonly int version, family, vrid, priority, advert_int
    cdef readonly int auth_type, checksum, checksum_kind
    cdef readonly bytes auth_data        # 8 raw bytes for auth type 1, else b""
    cdef readonly bytes packed_addresses # count * (4|16) bytes

    @property
    def addresses(self):
        """The addresses as text, in wire order."""
        cdef int alen = addr_len(self.family)
        cdef bytes raw = self.packed_addresses
        return tuple(socket.inet_ntop(self.family, raw[i:i + alen])
                     for i in range(0, len(raw), alen))

    @property
    def advert_int_seconds(self):
        """The interval in seconds (v2 carries seconds, v3 centiseconds)."""
        return self.advert_int if self.version == 2 else self.advert_int / 100.0

    def __repr__(self):
        return (f"Advert(version={self.version}, vrid={self.vrid}, priority={self.priority}, "
                f"advert_int={self.advert_int}, addresses={self.addresses!r}, "
                f"auth_type={self.auth_type}, checksum=0x{self.checksum:04x}, "
                f"checksum_kind={CHECKSUM_KIND_NAMES[self.checksum_kind]})")


cdef class Rejected:
    """Why a packet was rejected: reason (a REJECT_NAMES entry) and its code."""
    cdef readonly int code

    def __cinit__(self, int code):
        self.code = code

    @property
    def reason(self):
        return REJECT_NAMES[self.code]

    def __eq__(self, other):
        return isinstance(other, Rejected) and (<Rejected>other).code == self.code

    def __hash__(self):
        return hash(self.code)

    def __repr__(self):
        return f"Rejected({self.reason!r})"


cdef Advert make_advert(const advert_t* a):
    cdef Advert r = Advert.__new__(Advert)
    r.version = a.version
    r.family = a.family
    r.vrid = a.vrid
    r.priority = a.priority
    r.advert_int = a.advert_int
    r.auth_type = a.auth_type
    r.checksum = a.checksum
    r.checksum_kind = a.checksum_kind
    r.auth_data = (PyBytes_FromStringAndSize(<const char*>a.auth_data, AUTH_LEN)
                   if a.auth_data != NULL else b"")
    r.packed_addresses = PyBytes_FromStringAndSize(<const char*>a.addrs,
                                                   a.naddr * addr_len(a.family))
    return r


@cython.boundscheck(False)
@cython.wraparound(False)
def decode(data, int family, src=None, dst=None):
    """Decode and validate one VRRP message (the IP payload).

    src/dst (str or packed) are the IP source and destination, needed for the
    v3 pseudo-header checksum.  Returns Advert or Rejected; bad bytes never
    raise (bad arguments do).
    """
    cdef advert_t a
    cdef int rc
    cdef const uint8_t[::1] view
    cdef const uint8_t* p
    cdef Py_ssize_t n
    cdef bytes s = None, d = None
    check_family(family)
    if src is not None:
        s = packed(src, family)
    if dst is not None:
        d = packed(dst, family)
    if type(data) is bytes:
        p = <const uint8_t*>PyBytes_AS_STRING(data)
        n = len(<bytes>data)
    else:
        view = memoryview(data).cast("B")
        n = view.shape[0]
        p = &view[0] if n else NULL
    rc = decode_advert(p, n, family,
                       <const uint8_t*>PyBytes_AS_STRING(s) if s is not None else NULL,
                       <const uint8_t*>PyBytes_AS_STRING(d) if d is not None else NULL,
                       &a)
    if rc != REJECT_NONE:
        return Rejected(rc)
    return make_advert(&a)


@cython.boundscheck(False)
@cython.wraparound(False)
def encode(int version, int family, int vrid, int priority, int advert_int, addresses=(),
           *, src=None, dst=None, int auth_type=0, auth_data=b"",
           bint v3_checksum_as_v2=False):
    """Encode one advertisement and return the VRRP message (the IP payload).

    advert_int is the raw field: seconds for v2, centiseconds for v3.
    addresses, src and dst are str or packed bytes; src/dst are needed for
    the v3 pseudo-header.  auth_data (v2 type 1) is up to 8 bytes or chars,
    zero padded.  Invalid arguments raise ValueError.
    """
    cdef bytes addrs, s = None, d = None, auth = None
    cdef uint8_t buf[MAX_MSG_LEN]
    cdef int n
    cdef Py_ssize_t naddr
    check_family(family)
    if not (0 <= vrid <= 255 and 0 <= priority <= 255):
        raise ValueError("vrid and priority are 0..255")
    if not 0 <= advert_int <= 0xffff or not 0 <= auth_type <= 255:
        raise ValueError("advert_int or auth_type out of range")
    addrs = b"".join([packed(a, family) for a in addresses])
    naddr = len(addrs) // addr_len(family)
    if naddr > 255:
        raise ValueError("at most 255 addresses per advert (count is 8 bits)")
    if src is not None:
        s = packed(src, family)
    if dst is not None:
        d = packed(dst, family)
    if auth_type == AUTH_PASS:
        auth = auth_data.encode() if isinstance(auth_data, str) else bytes(auth_data)
        if len(auth) > AUTH_LEN:
            raise ValueError("auth_data is at most 8 bytes (RFC 2338 5.3.10)")
        auth = auth.ljust(AUTH_LEN, b"\0")
    n = encode_advert(buf, sizeof(buf), version, family, vrid, priority, advert_int,
                      <const uint8_t*>PyBytes_AS_STRING(addrs), naddr,
                      auth_type,
                      <const uint8_t*>PyBytes_AS_STRING(auth) if auth is not None else NULL,
                      <const uint8_t*>PyBytes_AS_STRING(s) if s is not None else NULL,
                      <const uint8_t*>PyBytes_AS_STRING(d) if d is not None else NULL,
                      v3_checksum_as_v2)
    if n < 0:
        raise ValueError(
            "invalid advert: version 2|3, v2 IPv4 only with auth type 0|1 and "
            "advert_int 1..255, v3 advert_int 1..4095 and src/dst for the checksum")
    return PyBytes_FromStringAndSize(<const char*>buf, n)


def frame_header(int family, src_mac, src, dst, int payload_len):
    """The Ethernet + IP headers that precede a payload_len-byte advert from
    src to the multicast group dst, sent from src_mac (6 bytes)."""
    cdef uint8_t buf[64]
    cdef bytes mac = bytes(src_mac), s, d
    check_family(family)
    s, d = packed(src, family), packed(dst, family)
    if len(mac) != 6 or not 0 <= payload_len <= 0xffff - 40:
        raise ValueError("src_mac is 6 bytes; payload_len fits an IP datagram")
    cdef int n = encode_frame_header(buf, sizeof(buf), family, <const uint8_t*>PyBytes_AS_STRING(mac),
                                     <const uint8_t*>PyBytes_AS_STRING(s),
                                     <const uint8_t*>PyBytes_AS_STRING(d), payload_len)
    if n < 0:
        raise ValueError("dst must be a multicast group")
    return PyBytes_FromStringAndSize(<const char*>buf, n)


def with_priority(data, int priority):
    """A copy of an encoded advert with another priority (checksum patched)."""
    cdef bytearray b = bytearray(data)
    if len(b) < HDR_LEN or not 0 <= priority <= 255:
        raise ValueError("not an advert or priority out of 0..255")
    patch_priority(<uint8_t*>(<char*>b), priority)
    return bytes(b)


cdef inline const uint8_t* rows(const uint8_t[:, ::1] m, Py_ssize_t n, Py_ssize_t width,
                                str what) except? NULL:
    """Base pointer of an (n, >=width) array of packed addresses, NULL for None."""
    if m is None:
        return NULL
    if m.shape[0] < n or m.shape[1] < width:
        raise ValueError(f"{what} needs one packed address per row")
    return &m[0, 0] if n else NULL


@cython.boundscheck(False)
@cython.wraparound(False)
def decode_batch(const uint8_t[:, ::1] packets, const uint16_t[::1] lengths, int family,
                 const uint8_t[:, ::1] srcs, const uint8_t[:, ::1] dsts,
                 uint8_t[::1] reject_out, uint8_t[::1] vrid_out,
                 uint8_t[::1] priority_out, uint16_t[::1] advert_int_out):
    """Decode packets[i][:lengths[i]] for every row without a Python object per packet.

    srcs/dsts hold one packed address per row (or are None: v3 then only
    matches without pseudo-header).  reject_out[i] gets the Reject code; the
    other outputs are filled for accepted rows.  Returns the accepted count.
    """
    cdef Py_ssize_t i, n = packets.shape[0]
    cdef Py_ssize_t alen = addr_len(family)
    cdef advert_t a
    cdef int rc, accepted = 0
    cdef const uint8_t *s
    cdef const uint8_t *d
    check_family(family)
    if lengths.shape[0] < n or reject_out.shape[0] < n or vrid_out.shape[0] < n \
            or priority_out.shape[0] < n or advert_int_out.shape[0] < n:
        raise ValueError("every per-row array needs packets.shape[0] entries")
    s = rows(srcs, n, alen, "srcs")
    d = rows(dsts, n, alen, "dsts")
    with nogil:
        for i in range(n):
            if lengths[i] > packets.shape[1]:
                reject_out[i] = REJECT_BAD_LENGTH
                continue
            rc = decode_advert(&packets[i, 0], lengths[i], family,
                               s + i * srcs.shape[1] if s != NULL else NULL,
                               d + i * dsts.shape[1] if d != NULL else NULL, &a)
            reject_out[i] = rc
            if rc == REJECT_NONE:
                accepted += 1
                vrid_out[i] = a.vrid
                priority_out[i] = a.priority
                advert_int_out[i] = a.advert_int
    return accepted


@cython.boundscheck(False)
@cython.wraparound(False)
def encode_batch(int version, int family, const uint8_t[::1] vrids,
                 const uint8_t[::1] priorities, const uint16_t[::1] advert_ints,
                 const uint8_t[:, ::1] addrs, const uint8_t[::1] naddrs,
                 const uint8_t[:, ::1] srcs, const uint8_t[:, ::1] dsts,
                 uint8_t[:, ::1] out, uint16_t[::1] lengths_out,
                 bint v3_checksum_as_v2=False):
    """Encode one advert per row of vrids into out[i]; lengths_out[i] = its length (0 if invalid).

    addrs[i] holds naddrs[i] packed addresses; srcs/dsts one packed address
    per row (None allowed for v3_checksum_as_v2 over IPv4 and for v2).  No
    v2 authentication.  Returns the count encoded.
    """
    cdef Py_ssize_t i, n = vrids.shape[0]
    cdef Py_ssize_t alen = addr_len(family)
    cdef int length, done = 0
    cdef const uint8_t *s
    cdef const uint8_t *d
    check_family(family)
    if priorities.shape[0] < n or advert_ints.shape[0] < n or addrs.shape[0] < n \
            or naddrs.shape[0] < n or out.shape[0] < n or lengths_out.shape[0] < n:
        raise ValueError("every per-row array needs vrids.shape[0] entries")
    s = rows(srcs, n, alen, "srcs")
    d = rows(dsts, n, alen, "dsts")
    with nogil:
        for i in range(n):
            length = -1
            if naddrs[i] * alen <= addrs.shape[1]:
                length = encode_advert(&out[i, 0], out.shape[1], version, family,
                                       vrids[i], priorities[i], advert_ints[i],
                                       &addrs[i, 0] if addrs.shape[1] else NULL, naddrs[i],
                                       AUTH_NONE, NULL,
                                       s + i * srcs.shape[1] if s != NULL else NULL,
                                       d + i * dsts.shape[1] if d != NULL else NULL,
                                       v3_checksum_as_v2)
            lengths_out[i] = length if length > 0 else 0
            if length > 0:
                done += 1
    return done
