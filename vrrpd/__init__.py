"""vrrpd: a VRRP (RFC 3768 / RFC 5798 / RFC 9568) daemon compatible with keepalived's VRRP side."""
__version__ = "0.1.0"
