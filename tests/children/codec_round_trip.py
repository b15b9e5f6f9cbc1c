"""A VRRPv3 IPv6 advert encoded and decoded by the vrrpd._codec first on the path,
and a truncated one rejected as bad_length; exits non-zero if not."""
from socket import AF_INET6

from vrrpd import _codec as c

m = c.encode(3, AF_INET6, 9, 200, 100, ["2001:db8::1"], src="fe80::1", dst="ff02::12")
a = c.decode(m, AF_INET6, "fe80::1", "ff02::12")
assert (a.vrid, a.priority, a.addresses) == (9, 200, ("2001:db8::1",)), a
assert c.decode(m[:-1], AF_INET6).reason == "bad_length"
