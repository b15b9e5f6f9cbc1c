"""The sample configurations Debian's keepalived package ships, and those of
them that keepalived 2.2.7 itself rejects."""


SAMPLES = "/usr/share/doc/keepalived/samples"
# Samples that keepalived 2.2.7 itself rejects (checked with keepalived -t), and why.
SAMPLES_BROKEN = {
    "keepalived.conf.vrrp.lvs_syncd": "vrrp_sync_group lists members without group { }",
    "keepalived.conf.vrrp.rules": "rule prefix '192.168.100./24' is not an address",
    "keepalived.conf.conditional_conf": "scripts only for config ids high/low",
}
