"""Codec speed: the Cython codec against a plain-`struct` pure-Python codec.

    .venv/bin/python -m pytest bench/test_bench_codec.py -p no:cacheprovider

The baseline below does the same work as vrrpd's codec (same validation,
checksum with pseudo-header) in the most direct pure-Python way.  The
pytest-benchmark tables compare the two per group; test_speedups prints the
ratios and checks the target (batch decode >= 10x).
"""
import array
import socket
import struct
import timeit
from socket import AF_INET, AF_INET6

import pytest

from vrrpd import _codec as codec

N = 1000
SRC, DST = socket.inet_pton(AF_INET, "192.0.2.10"), socket.inet_pton(AF_INET, "224.0.0.18")
VIPS = [socket.inet_pton(AF_INET, f"192.0.2.{100 + i}") for i in range(2)]


# ------------------------------------------------------ pure-Python baseline

def _sum16(data):
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _pseudo(family, src, dst, length):
    if family == AF_INET:
        return src + dst + struct.pack("!BBH", 0, 112, length)
    return src + dst + struct.pack("!IxxxB", length, 112)


def py_encode(version, family, vrid, priority, advert_int, addrs, src, dst):
    body = b"".join(addrs)
    if version == 2:
        msg = struct.pack("!BBBBBBH", 0x21, vrid, priority, len(addrs), 0, advert_int, 0) \
            + body + bytes(8)
        ck = ~_sum16(msg) & 0xFFFF
    else:
        msg = struct.pack("!BBBBHH", 0x31, vrid, priority, len(addrs), advert_int, 0) + body
        ck = ~_sum16(_pseudo(family, src, dst, len(msg)) + msg) & 0xFFFF
    return msg[:6] + struct.pack("!H", ck) + msg[8:]


def py_decode(data, family, src, dst):
    """(vrid, priority, advert_int, addresses) or a reject name."""
    if len(data) < 8:
        return "too_short"
    vt, vrid, prio, naddr, word, _ck = struct.unpack_from("!BBBBHH", data)
    version = vt >> 4
    if version not in (2, 3):
        return "bad_version"
    if vt & 0x0F != 1:
        return "bad_type"
    if version == 2 and family == AF_INET6:
        return "v2_ipv6"
    alen = 4 if family == AF_INET else 16
    if len(data) != 8 + naddr * alen + (8 if version == 2 else 0):
        return "bad_length"
    if version == 2:
        if _sum16(data) != 0xFFFF:
            return "bad_checksum"
        auth_type, advert_int = word >> 8, word & 0xFF
        if auth_type == 2:
            return "auth_ah"
        if auth_type > 2:
            return "bad_auth_type"
    else:
        if _sum16(_pseudo(family, src, dst, len(data)) + data) != 0xFFFF and \
                not (family == AF_INET and _sum16(data) == 0xFFFF):
            return "bad_checksum"
        advert_int = word & 0x0FFF
    if advert_int == 0:
        return "zero_advert_int"
    addrs = [data[8 + i * alen:8 + (i + 1) * alen] for i in range(naddr)]
    return vrid, prio, advert_int, addrs


# -------------------------------------------------------------- workloads

def packets():
    return [codec.encode(3, AF_INET, i % 256, 100 + i % 100, 100, VIPS, src=SRC, dst=DST)
            for i in range(N)]


def matrix(rows, width, fill):
    buf = bytearray(rows * width)
    for i, row in enumerate(fill):
        buf[i * width:i * width + len(row)] = row
    return memoryview(buf).cast("B", shape=[rows, width])


class Batch:
    """Preallocated inputs/outputs for decode_batch / encode_batch."""

    def __init__(self, msgs):
        self.packets = matrix(N, 64, msgs)
        self.lengths = array.array("H", [len(m) for m in msgs])
        self.srcs, self.dsts = matrix(N, 4, [SRC] * N), matrix(N, 4, [DST] * N)
        self.reject, self.vrid, self.prio = bytearray(N), bytearray(N), bytearray(N)
        self.adv_int = array.array("H", bytes(2 * N))
        self.vrids = bytearray(i % 256 for i in range(N))
        self.prios = bytearray(100 + i % 100 for i in range(N))
        self.ints = array.array("H", [100] * N)
        self.addrs = matrix(N, 8, [b"".join(VIPS)] * N)
        self.naddrs = bytearray([2] * N)
        self.out = matrix(N, 64, [])

    def decode(self):
        return codec.decode_batch(self.packets, self.lengths, AF_INET, self.srcs, self.dsts,
                                  self.reject, self.vrid, self.prio, self.adv_int)

    def encode(self):
        return codec.encode_batch(3, AF_INET, self.vrids, self.prios, self.ints, self.addrs,
                                  self.naddrs, self.srcs, self.dsts, self.out, self.lengths)


@pytest.fixture(scope="module")
def msgs():
    return packets()


@pytest.fixture(scope="module")
def batch(msgs):
    return Batch(msgs)


def cy_decode_all(msgs):
    return [codec.decode(m, AF_INET, SRC, DST) for m in msgs]


def py_decode_all(msgs):
    return [py_decode(m, AF_INET, SRC, DST) for m in msgs]


def py_encode_all():
    return [py_encode(3, AF_INET, i % 256, 100 + i % 100, 100, VIPS, SRC, DST) for i in range(N)]


def cy_encode_all():
    return [codec.encode(3, AF_INET, i % 256, 100 + i % 100, 100, VIPS, src=SRC, dst=DST)
            for i in range(N)]


def test_baseline_agrees_with_codec(msgs, batch):
    """The baseline is a real codec: same bytes, same fields."""
    assert py_encode_all() == msgs == cy_encode_all()
    for m, adv in zip(msgs, cy_decode_all(msgs)):
        assert py_decode(m, AF_INET, SRC, DST) == \
            (adv.vrid, adv.priority, adv.advert_int, list(map(bytes, [VIPS[0], VIPS[1]])))
    assert batch.decode() == N and batch.encode() == N
    assert all(bytes(batch.out.obj[i * 64:i * 64 + len(m)]) == m for i, m in enumerate(msgs))


# ------------------------------------------------------- pytest-benchmark

@pytest.mark.benchmark(group="decode-one")
def test_decode_one_cython(benchmark, msgs):
    benchmark(codec.decode, msgs[0], AF_INET, SRC, DST)


@pytest.mark.benchmark(group="decode-one")
def test_decode_one_python(benchmark, msgs):
    benchmark(py_decode, msgs[0], AF_INET, SRC, DST)


@pytest.mark.benchmark(group="encode-one")
def test_encode_one_cython(benchmark):
    benchmark(codec.encode, 3, AF_INET, 1, 100, 100, VIPS, src=SRC, dst=DST)


@pytest.mark.benchmark(group="encode-one")
def test_encode_one_python(benchmark):
    benchmark(py_encode, 3, AF_INET, 1, 100, 100, VIPS, SRC, DST)


@pytest.mark.benchmark(group="decode-1000")
def test_decode_batch_cython(benchmark, batch):
    assert benchmark(batch.decode) == N


@pytest.mark.benchmark(group="decode-1000")
def test_decode_loop_cython(benchmark, msgs):
    benchmark(cy_decode_all, msgs)


@pytest.mark.benchmark(group="decode-1000")
def test_decode_loop_python(benchmark, msgs):
    benchmark(py_decode_all, msgs)


@pytest.mark.benchmark(group="encode-1000")
def test_encode_batch_cython(benchmark, batch):
    assert benchmark(batch.encode) == N


@pytest.mark.benchmark(group="encode-1000")
def test_encode_loop_python(benchmark):
    benchmark(py_encode_all)


def best(fn, number):
    return min(timeit.repeat(fn, number=number, repeat=7)) / number


def test_speedups(msgs, batch, capsys):
    ratios = {
        "decode one": best(lambda: py_decode(msgs[0], AF_INET, SRC, DST), 2000)
        / best(lambda: codec.decode(msgs[0], AF_INET, SRC, DST), 2000),
        "encode one": best(lambda: py_encode(3, AF_INET, 1, 100, 100, VIPS, SRC, DST), 2000)
        / best(lambda: codec.encode(3, AF_INET, 1, 100, 100, VIPS, src=SRC, dst=DST), 2000),
        "decode 1000 (batch)": best(lambda: py_decode_all(msgs), 5) / best(batch.decode, 50),
        "decode 1000 (loop)": best(lambda: py_decode_all(msgs), 5)
        / best(lambda: cy_decode_all(msgs), 5),
        "encode 1000 (batch)": best(py_encode_all, 5) / best(batch.encode, 50),
    }
    with capsys.disabled():
        print()
        for name, r in ratios.items():
            print(f"  speedup over pure-Python struct codec, {name}: {r:.1f}x")
    assert ratios["decode 1000 (batch)"] >= 10
