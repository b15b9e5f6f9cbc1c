"""Everything that talks to the kernel's network stack: netlink (batched
requests, the link monitor), VIPs, virtual routes and rules, macvlan VMACs,
VRRP sockets, gratuitous ARP / unsolicited NA, and strict mode's nftables rules."""
