"""Unit tests of the VRRP codec: hand-computed vectors, every reject reason, fuzzing."""
import array
import socket
from socket import AF_INET, AF_INET6

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vrrpd import _codec as codec
from vrrpd._codec import Advert, Rejected, decode, encode

SRC4, DST4 = "192.0.2.10", "224.0.0.18"
SRC6, DST6 = "fe80::10", "ff02::12"
ENDPOINTS = {AF_INET: (SRC4, DST4), AF_INET6: (SRC6, DST6)}


def ones_sum(data: bytes) -> int:
    """RFC 1071 sum written independently of the codec (oracle for reseal)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_header(family, src, dst, length):
    s, d = socket.inet_pton(family, src), socket.inet_pton(family, dst)
    if family == AF_INET:
        return s + d + bytes([0, 112]) + length.to_bytes(2, "big")
    return s + d + length.to_bytes(4, "big") + bytes([0, 0, 0, 112])


def reseal(msg: bytes, family=AF_INET, pseudo=True) -> bytes:
    """Recompute the checksum of a (possibly doctored) message."""
    msg = bytearray(msg)
    msg[6:8] = b"\0\0"
    covered = bytes(msg)
    if msg[0] >> 4 == 3 and pseudo:
        covered = pseudo_header(family, *ENDPOINTS[family], len(msg)) + covered
    msg[6:8] = (~ones_sum(covered) & 0xFFFF).to_bytes(2, "big")
    return bytes(msg)


def rejected(reason):
    assert reason in codec.REJECT_NAMES
    return Rejected(codec.REJECT_NAMES.index(reason))


def v2(**kw):
    args = dict(vrid=1, priority=100, advert_int=1, addresses=["192.0.2.1"])
    args.update(kw)
    return encode(2, AF_INET, **args)


def v3(family=AF_INET, **kw):
    a = "192.0.2.1" if family == AF_INET else "2001:db8::1"
    args = dict(vrid=1, priority=100, advert_int=100, addresses=[a])
    args.update(kw)
    return encode(3, family, src=ENDPOINTS[family][0], dst=ENDPOINTS[family][1], **args)


# ------------------------------------------------------------- known vectors
# Checksums worked out by hand with RFC 1071 arithmetic, e.g. v2 below:
# 0x2101 + 0x6401 + 0x0001 + 0xc000 + 0x0201 = 0x14704 -> 0x4705 -> ~ = 0xb8fa.

def test_v2_vector():
    assert v2().hex() == "210164010001b8fa" "c0000201" "0000000000000000"


def test_v3_ipv4_vector_with_pseudo_header():
    # + pseudo: c000 020a e000 0012 0070 000c -> total 0x2f9ff -> 0xfa01 -> 0x05fe
    assert v3().hex() == "31016401006405fe" "c0000201"


def test_v3_ipv4_vector_without_pseudo_header():
    msg = encode(3, AF_INET, 1, 100, 100, ["192.0.2.1"], v3_checksum_as_v2=True)
    assert msg.hex() == "310164010064a897" "c0000201"


def test_v2_password_is_zero_padded():
    msg = v2(auth_type=1, auth_data="secret")
    assert msg[4] == 1 and msg[-8:] == b"secret\0\0"
    adv = decode(msg, AF_INET)
    assert adv.auth_type == 1 and adv.auth_data == b"secret\0\0"


def test_decoded_fields():
    adv = decode(v3(AF_INET6, vrid=7, priority=254, advert_int=4095,
                    addresses=["2001:db8::1", "2001:db8::2"]), AF_INET6, SRC6, DST6)
    assert isinstance(adv, Advert)
    assert (adv.version, adv.family, adv.vrid, adv.priority, adv.advert_int) == \
        (3, AF_INET6, 7, 254, 4095)
    assert adv.addresses == ("2001:db8::1", "2001:db8::2")
    assert adv.checksum_kind == codec.CKSUM_V3_PSEUDO_KIND
    assert adv.auth_type == 0 and adv.auth_data == b""
    assert adv.advert_int_seconds == pytest.approx(40.95)


def test_zero_addresses_and_max_addresses():
    assert decode(v2(addresses=[]), AF_INET).addresses == ()
    many = [f"2001:db8::{i:x}" for i in range(1, 256)]
    adv = decode(v3(AF_INET6, addresses=many), AF_INET6, SRC6, DST6)
    assert adv.addresses == tuple(many)


def test_packed_and_text_addresses_are_equivalent():
    packed = [socket.inet_pton(AF_INET, "192.0.2.1")]
    assert v3(addresses=packed) == v3(addresses=["192.0.2.1"])
    assert encode(3, AF_INET, 1, 100, 100, packed, src=socket.inet_pton(AF_INET, SRC4),
                  dst=socket.inet_pton(AF_INET, DST4)) == v3()


def test_decode_accepts_any_buffer():
    msg = v3()
    for buf in (bytearray(msg), memoryview(msg)):
        assert decode(buf, AF_INET, SRC4, DST4).vrid == 1


# ------------------------------------------------------------ checksum kinds

def test_v3_ipv4_accepts_both_checksum_variants():
    with_ph = decode(v3(), AF_INET, SRC4, DST4)
    without = decode(encode(3, AF_INET, 1, 100, 100, ["192.0.2.1"], v3_checksum_as_v2=True),
                     AF_INET, SRC4, DST4)
    assert with_ph.checksum_kind == codec.CKSUM_V3_PSEUDO_KIND
    assert without.checksum_kind == codec.CKSUM_V3_NO_PSEUDO_KIND
    assert decode(v2(), AF_INET).checksum_kind == codec.CKSUM_V2_KIND


def test_pseudo_header_uses_the_given_addresses():
    assert decode(v3(), AF_INET, "192.0.2.11", DST4) == rejected("bad_checksum")
    assert decode(v3(AF_INET6), AF_INET6, SRC6, "ff02::13") == rejected("bad_checksum")
    # Without src/dst only the no-pseudo-header variant can match.
    assert decode(v3(), AF_INET) == rejected("bad_checksum")
    assert decode(v3(AF_INET6), AF_INET6) == rejected("bad_checksum")


def test_v3_checksum_as_v2_does_not_apply_to_ipv6():
    a = encode(3, AF_INET6, 1, 100, 100, ["2001:db8::1"], src=SRC6, dst=DST6,
               v3_checksum_as_v2=True)
    assert a == v3(AF_INET6)


@pytest.mark.parametrize("make", [
    lambda: v2(auth_type=1, auth_data="pw"),
    lambda: v3(),
    lambda: encode(3, AF_INET, 9, 50, 100, ["192.0.2.1", "192.0.2.2"], v3_checksum_as_v2=True),
    lambda: v3(AF_INET6, addresses=["2001:db8::1", "2001:db8::2"]),
])
def test_patch_priority_equals_reencoding(make):
    msg = make()
    family = AF_INET6 if len(msg) == 8 + 32 else AF_INET
    ref = decode(msg, family, *ENDPOINTS[family])
    for prio in range(256):
        patched = codec.with_priority(msg, prio)
        assert patched == reseal(msg[:2] + bytes([prio]) + msg[3:], family,
                                 pseudo=ref.checksum_kind == codec.CKSUM_V3_PSEUDO_KIND)
        assert decode(patched, family, *ENDPOINTS[family]).priority == prio


# -------------------------------------------------------------------- rejects

def test_reject_names():
    names = codec.REJECT_NAMES
    assert names[0] == "none" and len(set(names)) == len(names)
    assert all(n.isidentifier() and n.islower() for n in names)


@pytest.mark.parametrize("length", range(8))
def test_too_short(length):
    assert decode(v3()[:length], AF_INET, SRC4, DST4) == rejected("too_short")


@pytest.mark.parametrize("version", [0, 1, 4, 15])
def test_bad_version(version):
    msg = bytes([version << 4 | 1]) + v3()[1:]
    assert decode(reseal(msg), AF_INET, SRC4, DST4) == rejected("bad_version")


@pytest.mark.parametrize("type_", [0, 2, 15])
def test_bad_type(type_):
    msg = bytes([0x30 | type_]) + v3()[1:]
    assert decode(reseal(msg), AF_INET, SRC4, DST4) == rejected("bad_type")


def test_v2_over_ipv6():
    msg = bytes([0x21, 1, 100, 1, 0, 1, 0, 0]) + bytes(16) + bytes(8)
    assert decode(reseal(msg, AF_INET6), AF_INET6, SRC6, DST6) == rejected("v2_ipv6")


@pytest.mark.parametrize("make,family", [(v2, AF_INET), (v3, AF_INET),
                                         (lambda: v3(AF_INET6), AF_INET6)])
def test_bad_length(make, family):
    msg = make()
    ep = ENDPOINTS[family]
    # One byte short of the address list / auth data.
    assert decode(msg[:-1], family, *ep) == rejected("bad_length")
    # Trailing bytes: rejected like keepalived's "vrrp packet too long".
    assert decode(reseal(msg + b"\0\0", family), family, *ep) == rejected("bad_length")
    # Count larger than the addresses present.
    assert decode(reseal(msg[:3] + bytes([2]) + msg[4:], family), family, *ep) == \
        rejected("bad_length")


@pytest.mark.parametrize("make,family", [(v2, AF_INET), (v3, AF_INET),
                                         (lambda: v3(AF_INET6), AF_INET6)])
def test_bad_checksum_on_any_flipped_bit(make, family):
    msg = make()
    for bit in range(len(msg) * 8):
        bad = bytearray(msg)
        bad[bit // 8] ^= 1 << (bit % 8)
        got = decode(bytes(bad), family, *ENDPOINTS[family])
        # A flipped bit in a field checked earlier may be reported as that
        # field; it must never be accepted.
        assert isinstance(got, Rejected), (bit, got)
        if bit // 8 >= 2 and bit // 8 != 3:
            assert got == rejected("bad_checksum")


def test_zero_advert_int():
    assert decode(reseal(v2()[:5] + b"\0" + v2()[6:]), AF_INET) == rejected("zero_advert_int")
    assert decode(reseal(v3()[:4] + b"\0\0" + v3()[6:]), AF_INET, SRC4, DST4) == \
        rejected("zero_advert_int")
    # Only the reserved bits set is still a zero interval.
    assert decode(reseal(v3()[:4] + b"\xf0\0" + v3()[6:]), AF_INET, SRC4, DST4) == \
        rejected("zero_advert_int")


def test_v3_reserved_bits_ignored_on_receive():
    msg = reseal(v3()[:4] + bytes([0xF0, 100]) + v3()[6:])
    assert decode(msg, AF_INET, SRC4, DST4).advert_int == 100


def test_v2_auth_ah_and_unknown_auth_types():
    assert decode(reseal(v2()[:4] + b"\x02" + v2()[5:]), AF_INET) == rejected("auth_ah")
    for t in (3, 4, 255):
        assert decode(reseal(v2()[:4] + bytes([t]) + v2()[5:]), AF_INET) == \
            rejected("bad_auth_type")


def test_v2_auth_none_ignores_auth_data():
    msg = reseal(v2()[:-8] + b"garbage!")
    adv = decode(msg, AF_INET)
    assert adv.auth_type == 0 and adv.auth_data == b""


# ------------------------------------------------------------ encode errors

@pytest.mark.parametrize("call", [
    lambda: encode(2, AF_INET6, 1, 100, 1, []),                      # v2 is IPv4 only
    lambda: encode(2, AF_INET, 1, 100, 0, []),                       # zero interval
    lambda: encode(2, AF_INET, 1, 100, 256, []),                     # 8-bit seconds
    lambda: encode(3, AF_INET, 1, 100, 4096, [], src=SRC4, dst=DST4),  # 12-bit
    lambda: encode(3, AF_INET, 1, 100, 100, []),                     # no pseudo-header
    lambda: encode(4, AF_INET, 1, 100, 1, []),
    lambda: encode(2, AF_INET, 1, 100, 1, [], auth_type=2),          # no AH
    lambda: encode(2, AF_INET, 1, 100, 1, [], auth_type=1, auth_data="123456789"),
    lambda: encode(2, 99, 1, 100, 1, []),
    lambda: encode(2, AF_INET, 256, 100, 1, []),
    lambda: encode(2, AF_INET, 1, 100, 1, ["2001:db8::1"]),
    lambda: encode(2, AF_INET, 1, 100, 1, ["192.0.2.1"] * 256),
])
def test_encode_rejects_invalid_arguments(call):
    with pytest.raises((ValueError, OSError)):
        call()


# -------------------------------------------------------------------- batch

def _matrix(rows, width, fill=()):
    """A C-contiguous (rows, width) uint8 matrix with row i starting with fill[i]."""
    buf = bytearray(rows * width)
    for i, row in enumerate(fill):
        buf[i * width:i * width + len(row)] = row
    return memoryview(buf).cast("B", shape=[rows, width])


def _row(m, i, length):
    return m.obj[i * m.shape[1]:i * m.shape[1] + length]


def test_batch_matches_single():
    msgs = [v3(vrid=i, priority=i, advert_int=i + 1) for i in range(200)]
    msgs[3] = msgs[3][:-1]                                  # bad_length
    msgs[5] = msgs[5][:6] + b"\0\0" + msgs[5][8:]           # bad_checksum
    n = len(msgs)
    packets = _matrix(n, 64, msgs)
    srcs = _matrix(n, 4, [socket.inet_pton(AF_INET, SRC4)] * n)
    dsts = _matrix(n, 4, [socket.inet_pton(AF_INET, DST4)] * n)
    lengths = array.array("H", [len(m) for m in msgs])
    reject, vrid, prio = bytearray(n), bytearray(n), bytearray(n)
    adv_int = array.array("H", bytes(2 * n))
    accepted = codec.decode_batch(packets, lengths, AF_INET, srcs, dsts,
                                  reject, vrid, prio, adv_int)
    assert accepted == n - 2
    for i, m in enumerate(msgs):
        single = decode(m, AF_INET, SRC4, DST4)
        if isinstance(single, Rejected):
            assert reject[i] == single.code
        else:
            assert (reject[i], vrid[i], prio[i], adv_int[i]) == \
                (0, single.vrid, single.priority, single.advert_int)


def test_encode_batch_matches_single():
    n = 50
    vips = [socket.inet_pton(AF_INET, "192.0.2.1"), socket.inet_pton(AF_INET, "192.0.2.2")]
    addrs = _matrix(n, 8, [b"".join(vips)] * n)
    srcs = _matrix(n, 4, [socket.inet_pton(AF_INET, SRC4)] * n)
    dsts = _matrix(n, 4, [socket.inet_pton(AF_INET, DST4)] * n)
    vrids = bytearray(range(1, n + 1))
    prios = bytearray(range(100, 100 + n))
    ints = array.array("H", [100] * n)
    naddrs = bytearray([i % 3 for i in range(n)])
    out, lengths = _matrix(n, 64), array.array("H", bytes(2 * n))
    assert codec.encode_batch(3, AF_INET, vrids, prios, ints, addrs, naddrs, srcs, dsts,
                              out, lengths) == n
    for i in range(n):
        want = v3(vrid=vrids[i], priority=prios[i], addresses=vips[:naddrs[i]])
        assert _row(out, i, lengths[i]) == want


# -------------------------------------------------------------------- fuzz

FAMILIES = st.sampled_from([AF_INET, AF_INET6])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), family=FAMILIES, with_endpoints=st.booleans())
def test_fuzz_random_bytes_never_raise(data, family, with_endpoints):
    ep = ENDPOINTS[family] if with_endpoints else (None, None)
    got = decode(data, family, *ep)
    assert isinstance(got, (Advert, Rejected))


@st.composite
def valid_adverts(draw):
    family = draw(FAMILIES)
    version = 3 if family == AF_INET6 else draw(st.sampled_from([2, 3]))
    alen = 4 if family == AF_INET else 16
    addrs = draw(st.lists(st.binary(min_size=alen, max_size=alen), max_size=20))
    if version == 2:
        kw = dict(advert_int=draw(st.integers(1, 255)), auth_type=draw(st.sampled_from([0, 1])),
                  auth_data=draw(st.binary(max_size=8)))
    else:
        kw = dict(advert_int=draw(st.integers(1, 4095)), src=ENDPOINTS[family][0],
                  dst=ENDPOINTS[family][1])
    msg = encode(version, family, draw(st.integers(0, 255)), draw(st.integers(0, 255)),
                 addresses=addrs, **kw)
    return family, msg


@settings(max_examples=1500, deadline=None)
@given(case=valid_adverts(), data=st.data())
def test_fuzz_truncation_rejected_without_reading_beyond(case, data):
    family, msg = case
    assert isinstance(decode(msg, family, *ENDPOINTS[family]), Advert)
    cut = data.draw(st.integers(0, len(msg) - 1))
    # A view of the prefix, with the rest of the valid packet right after it
    # in memory: reading past the end would find a packet that checks out.
    got = decode(memoryview(msg)[:cut], family, *ENDPOINTS[family])
    assert got in (rejected("too_short"), rejected("bad_length"))


@settings(max_examples=1500, deadline=None)
@given(case=valid_adverts(), data=st.data())
def test_fuzz_mutations_never_raise(case, data):
    family, msg = case
    buf = bytearray(msg)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    got = decode(bytes(buf), family, *ENDPOINTS[family])
    assert isinstance(got, (Advert, Rejected))
    if isinstance(got, Advert):
        # Accepted only if the checksum really holds (independent arithmetic).
        covered = bytes(buf)
        if got.checksum_kind == codec.CKSUM_V3_PSEUDO_KIND:
            covered = pseudo_header(family, *ENDPOINTS[family], len(buf)) + covered
        assert ones_sum(covered) == 0xFFFF
