"""vrrpctl: talk to a running vrrpd over its control socket (vrrpd.ops.control).

  vrrpctl [--socket PATH] status [--json]
  vrrpctl show INSTANCE [--json]
  vrrpctl stats [--json]
  vrrpctl reload

Exit status: 0 ok, 1 the daemon reported an error (e.g. reload rejected),
2 cannot reach the daemon.  --json prints the daemon's result unchanged
(schemas in vrrpd.ops.dumps).
"""
from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
import time

from vrrpd.ops.control import DEFAULT_PATH


class CtlError(Exception):
    pass


CONNECT_RETRY = 2.0     # seconds to retry a connect refused with EAGAIN (backlog full)


def connect(s: socket.socket, path: str, retry: float = CONNECT_RETRY) -> None:
    """A unix socket's connect fails with EAGAIN while the daemon's listen
    backlog is full (many clients at once): retry briefly."""
    end = time.monotonic() + retry
    delay = 0.005
    while True:
        try:
            s.connect(path)
            return
        except BlockingIOError as e:
            if e.errno != errno.EAGAIN or time.monotonic() + delay > end:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def request(path: str, cmd: str, *args: str, timeout: float = 60.0,
            retry: float = CONNECT_RETRY):
    """One command -> its result; CtlError with the daemon's message on failure.
    A "busy" refusal (the daemon's client cap) is retried for `retry` seconds."""
    end = time.monotonic() + retry
    delay = 0.005
    while True:
        reply = _exchange(path, {"cmd": cmd, "args": list(args)}, timeout, retry)
        busy = not reply.get("ok") and str(reply.get("error", "")).startswith("busy:")
        if not busy or time.monotonic() + delay > end:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    if not reply.get("ok"):
        raise CtlError(reply.get("error", "unknown error"))
    return reply["result"]


def _exchange(path: str, req: dict, timeout: float, retry: float) -> dict:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            connect(s, path, retry)
            try:
                s.sendall(json.dumps(req).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass        # refused on accept (not root, busy): the reply says why
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
    except OSError as e:
        raise ConnectionError(f"cannot talk to vrrpd at {path}: {e}") from e
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ConnectionError(f"vrrpd at {path} sent no valid reply") from None
    if not isinstance(reply, dict):
        raise ConnectionError(f"vrrpd at {path} sent no valid reply")
    return reply


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header] + rows)


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(t))


def format_status(st: dict) -> str:
    rows = [[v["name"], v["interface"], v["vrid"], v["state"],
             f"{v['base_priority']}/{v['effective_priority']}", v["master_address"] or "-",
             _ago(v["last_transition"]), v["last_reason"] or "-", " ".join(v["vips"])]
            for v in st["instances"]]
    return table(rows, ["NAME", "IFACE", "VRID", "STATE", "PRIO", "MASTER", "SINCE", "REASON",
                        "VIPS"])


def format_show(v: dict) -> str:
    skip = {"tracking", "counters"}
    out = [f"{k:18} {', '.join(x) if isinstance(x, list) else x}"
           for k, x in v.items() if k not in skip]
    tr = v.get("tracking") or {}
    out.append(f"tracking           fault={tr.get('fault')} pending={tr.get('pending')}")
    for t in tr.get("tracks", []):
        rev = " reverse" if t["reverse"] else ""
        out.append(f"  {t['kind']:9} {t['name']:20} weight {t['weight']}{rev}: {t['value']}")
    out.append("counters")
    out += [f"  {k:26} {n}" for k, n in v["counters"].items() if n or not k.startswith("reject_")]
    return "\n".join(out)


def format_stats(st: dict) -> str:
    keys = ["adverts_sent", "adverts_received", "became_master", "released_master",
            "pri0_sent", "pri0_received"]
    rows = []
    for name, c in st["instances"].items():
        rejected = sum(n for k, n in c.items() if k.startswith("reject_"))
        rows.append([name] + [c[k] for k in keys] + [rejected])
    out = [table(rows, ["NAME", "SENT", "RECEIVED", "MASTER", "RELEASED", "PRI0_TX", "PRI0_RX",
                        "REJECTED"])]
    out.append("")
    for s in st["sockets"]:
        nonzero = ", ".join(f"{k}={n}" for k, n in s["counters"].items() if n)
        out.append(f"socket {s['interface']} IPv{s['family']}: {nonzero or '-'}")
    out.append("scripts: " + ", ".join(f"{k}={n}" for k, n in st["scripts"].items()))
    out.append(f"reloads: {st['reloads']} ({st['reload_failures']} failed)")
    return "\n".join(out)


def format_reload(r: dict) -> str:
    out = [f"error: {e}" for e in r["errors"]] + [f"warning: {w}" for w in r["warnings"]]
    if r["ok"]:
        out.append(f"reloaded: {r['kept']} kept ({len(r['changed'])} changed), "
                   f"{len(r['replaced'])} replaced, {len(r['added'])} added, "
                   f"{len(r['removed'])} removed")
    else:
        out.append("reload rejected: the running configuration stays")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vrrpctl", description="control a running vrrpd")
    p.add_argument("-s", "--socket", default=DEFAULT_PATH, help=f"control socket ({DEFAULT_PATH})")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, helptext in (("status", "state of every instance"), ("stats", "counters")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--json", action="store_true")
    sp = sub.add_parser("show", help="one instance: tracking and counters")
    sp.add_argument("instance")
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser("reload", help="re-read the configuration")
    sp.add_argument("--json", action="store_true")
    return p


FORMATS = {"status": format_status, "show": format_show, "stats": format_stats,
           "reload": format_reload}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = [args.instance] if args.cmd == "show" else []
    try:
        result = request(args.socket, args.cmd, *extra)
    except ConnectionError as e:
        print(f"vrrpctl: {e}", file=sys.stderr)
        return 2
    except CtlError as e:
        print(f"vrrpctl: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else FORMATS[args.cmd](result))
    return 1 if args.cmd == "reload" and not result["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
