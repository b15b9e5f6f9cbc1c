"""How an operator sees and drives the daemon: the control socket and vrrpctl,
Prometheus metrics, signal dumps, logging, systemd notify, and process tuning."""
