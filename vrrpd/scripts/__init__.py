"""Processes vrrpd runs: track scripts and notify scripts forked by the spawner,
notify fifos, SMTP alerts, and the reporter that turns transitions into them."""
