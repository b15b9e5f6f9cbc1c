"""keepalived.conf reader: `load(path)` -> LoadResult(config, errors, warnings).

Pipeline, one module each: lexer (files, includes, comments, quotes, $defs,
@conditionals) -> parser (statement tree) -> build (typed model, per-block
keyword tables) -> validate (keepalived's cross-object rules).
"""
from __future__ import annotations

import dataclasses
import socket

from .model import *  # noqa: F401,F403  (the model is part of this package's API)
from .model import Config
from .problems import LoadResult, Problem, Report

__all__ = ["load", "default_config_id", "LoadResult", "Problem", "Config"]


def default_config_id() -> str:
    """keepalived's default config-id: the first part of the node name."""
    return socket.gethostname().split(".")[0]


def load(path: str, config_id: str | None = None) -> LoadResult:
    """Read, parse and check a keepalived.conf; config is None if there are errors."""
    # Imported here: the daemon uses the model, while a child process reads
    # its configuration (vrrpd.core.reload.child), so the reader's modules stay out
    # of its memory.
    from . import build, lexer, parser, validate

    report = Report()
    cid = default_config_id() if config_id is None else config_id
    lines, files = lexer.read(path, report, cid)
    tree = parser.parse(lines, report)
    builder = build.Builder(report)
    cfg, raw = builder.build(tree)
    cfg = validate.validate(cfg, raw, builder.bfd_names, report)
    if report.errors:
        return LoadResult(None, report.errors, report.warnings)
    cfg = dataclasses.replace(cfg, files=tuple(files), config_id=cid)
    return LoadResult(cfg, report.errors, report.warnings)
