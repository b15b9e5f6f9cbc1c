"""keepalived.conf text -> logical lines of tokens, each with its (file, line).

Handles what keepalived's reader does before keywords are looked at
(keepalived.conf(5): "Quoted strings", "include", "ADVANCED CONFIGURATION"):
`#`/`!` comments, quoted strings with shell-like escapes, `include` (and the
includer/m/w/b/a variants) with globs and brace expansion relative to the
including file, `@id`/`@^id` conditional lines, `$NAME=value` definitions
(multi-line with trailing `\\`), `$NAME`/`${NAME}` substitution and the
`~SEQ`/`~SEQx`/`~LST` line generators.  Braces are separate tokens.

Only regular, non-executable files are read (keepalived: "not a regular
non-executable file"; keepalived skips such a file, vrrpd refuses it), so
that an include of a device or FIFO can neither block nor read forever.
Every expansion is bounded (MAX_* below): a configuration over a limit is
one FILE:LINE error, found before it costs much time or memory.
"""
from __future__ import annotations

import glob
import os
import random
import re
import stat
import sys
from typing import Iterable

from .problems import Report, Where

INCLUDES = {"include", "includer", "includem", "includew", "includeb", "includea"}
MAX_INCLUDE_DEPTH = 32
MAX_SUBST_PASSES = 64
MAX_GENERATED = 500_000         # lines one source line expands to (~SEQ/~LST, multi-line
                                # $NAME; nested: the product)
MAX_CONFIG_BYTES = 16 << 20     # all files read, together
MAX_FILES = 1000                # file reads (an include fan-out reads a file again each time)
MAX_LINES = 500_000             # logical lines, after every expansion
MAX_LINE_CHARS = 1 << 20        # one line after $NAME substitution
MAX_TOKENS = 2_000_000          # tokens in all lines
MAX_TEXT = 4 * MAX_CONFIG_BYTES # characters in all lines, after expansion

_COMMENT = re.compile(r"[#!]")
_DEF = re.compile(r"\s*\$([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\s+([^}]*))?\}"
                  r"|\$([A-Za-z_][A-Za-z0-9_]*)(?=\s|$)")
_COND = re.compile(r"@(\^?)(\S*)\s*(.*)$", re.S)
_GEN = re.compile(r"\s*~(SEQx?|LST)\(")
_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t", "v": "\v"}


class LimitExceeded(Exception):
    """A configuration over one of the limits: reading stops with this error."""

    def __init__(self, where: Where, message: str):
        super().__init__(message)
        self.where = where


class Quoted(str):
    """A token that was (at least partly) quoted: never a brace or a keyword marker."""
    __slots__ = ()


Line = tuple[Where, list[str]]


def strip_comment(text: str) -> str:
    """Cut a `#` or `!` comment, ignoring those inside quotes."""
    if "#" not in text and "!" not in text:
        return text
    if '"' not in text and "'" not in text:
        m = _COMMENT.search(text)
        return text if m is None else text[:m.start()]
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "#!":
            return text[:i]
        i += 1
    return text


def tokenize(text: str) -> list[str]:
    """Split a line into tokens; raises ValueError on an unterminated quote."""
    if '"' not in text and "'" not in text:
        # Interned: the words repeated in every instance block ("eth0",
        # "BACKUP") become one object each, which the daemon receives
        # pickled once (reloadchild --plan), not once per instance.
        # Braces are tokens of their own; str.split's whitespace is re's \s.
        if "{" in text or "}" in text:
            text = text.replace("{", " { ").replace("}", " } ")
        return list(map(sys.intern, text.split()))
    tokens: list[str] = []
    buf: list[str] = []
    quoted = in_token = False
    i, n = 0, len(text)

    def flush():
        nonlocal buf, quoted, in_token
        if in_token:
            s = "".join(buf)
            tokens.append(Quoted(s) if quoted else s)
        buf, quoted, in_token = [], False, False

    while i < n:
        c = text[i]
        if c in "\"'":
            quote, i = c, i + 1
            quoted = in_token = True
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted string")
                c = text[i]
                if c == quote:
                    i += 1
                    break
                if c == "\\" and i + 1 < n:
                    s, i = _escape(text, i + 1)
                    buf.append(s)
                    continue
                buf.append(c)
                i += 1
        elif c.isspace():
            flush()
            i += 1
        elif c in "{}":
            flush()
            tokens.append(c)
            i += 1
        else:
            buf.append(c)
            in_token = True
            i += 1
    flush()
    return tokens


def _escape(text: str, i: int) -> tuple[str, int]:
    """Decode the escape whose letter is at text[i]; return (chars, next index)."""
    c = text[i]
    if c in _ESCAPES:
        return _ESCAPES[c], i + 1
    if c in "01234567":
        m = re.match(r"[0-7]{1,3}", text[i:])
        assert m is not None        # text[i] is an octal digit
        return chr(int(m.group(), 8) & 0xFF), i + len(m.group())
    if c == "x":
        m = re.match(r"[0-9A-Fa-f]+", text[i + 1:])
        if m:
            return chr(int(m.group()[-2:], 16)), i + 1 + len(m.group())
    if c == "c" and i + 1 < len(text):
        return chr(ord(text[i + 1].upper()) ^ 0x40), i + 2
    return c, i + 1


def expand_braces(pattern: str) -> list[str]:
    """csh-style {a,b} expansion, as glob(GLOB_BRACE) does for keepalived."""
    depth, start = 0, -1
    for i, c in enumerate(pattern):
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                inner, parts, d, last = pattern[start + 1:i], [], 0, 0
                for j, ch in enumerate(inner):
                    d += (ch == "{") - (ch == "}")
                    if ch == "," and d == 0:
                        parts.append(inner[last:j])
                        last = j + 1
                parts.append(inner[last:])
                head, tail = pattern[:start], pattern[i + 1:]
                return [r for p in parts for r in expand_braces(head + p + tail)]
    return [pattern]


def _split_top(text: str) -> list[str]:
    """Split on commas not inside {...}."""
    parts, depth, last = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "{") - (c == "}")
        if c == "," and depth == 0:
            parts.append(text[last:i].strip())
            last = i + 1
    parts.append(text[last:].strip())
    return parts


class Lexer:
    """Reads a file tree into lines; problems go to the shared Report."""

    def __init__(self, report: Report, config_id: str):
        self.report = report
        self.config_id = config_id
        self.defs: dict[str, str | list[str]] = {}
        self.lines: list[Line] = []
        self._open: list[str] = []
        self._pwd = "."
        self.files: list[str] = []
        self._bytes = 0             # read so far, all files
        self._count = 0             # logical lines processed so far
        self._tokens = 0
        self._chars = 0
        self._generated = 1         # lines each line stands for inside nested ~SEQ/~LST

    # -- files ---------------------------------------------------------------
    def read_file(self, path: str, where: Where | None = None) -> None:
        real = os.path.realpath(path)
        if real in self._open:
            self.report.error(where or (path, 0), f"include loop: {path} includes itself")
            return
        if len(self._open) >= MAX_INCLUDE_DEPTH:
            self.report.error(where or (path, 0), "includes nested too deeply")
            return
        if len(self.files) >= MAX_FILES:
            raise LimitExceeded(where or (path, 0), f"more than {MAX_FILES} files read (includes)")
        try:
            data = self._read_regular(path, where)
        except OSError as e:
            self.report.error(where or (path, 0), f"cannot read {path}: {e.strerror}")
            return
        if data is None:
            return
        self._count += data.count(b"\n")
        if self._count > MAX_LINES:
            raise LimitExceeded(where or (path, 0), f"more than {MAX_LINES} lines")
        physical = data.decode("utf-8", errors="surrogateescape").splitlines()
        del data
        for i, text in enumerate(physical):
            if len(text) > MAX_LINE_CHARS:
                raise LimitExceeded((path, i + 1), f"line longer than {MAX_LINE_CHARS} characters")
        self.files.append(path)
        self._open.append(real)
        saved_pwd, self._pwd = self._pwd, os.path.dirname(os.path.abspath(path))
        try:
            self._read_lines(path, physical)
        finally:
            self._pwd = saved_pwd
            self._open.pop()

    def _read_regular(self, path: str, where: Where | None) -> bytes | None:
        """The file's bytes; None (an error reported) unless it is a regular,
        non-executable file (checked before opening: opening a device may act)."""
        def refuse() -> None:
            self.report.error(where or (path, 0),
                              f"Configuration file '{path}' is not a regular non-executable file")
        if not _regular(os.stat(path)):
            refuse()
            return None
        # O_NONBLOCK: a FIFO swapped in after the check must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not _regular(st):
                refuse()
                return None
            if self._bytes + st.st_size > MAX_CONFIG_BYTES:
                raise LimitExceeded(where or (path, 0),
                                    f"configuration larger than {MAX_CONFIG_BYTES >> 20} MiB")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_CONFIG_BYTES - self._bytes + 1)
        finally:
            os.close(fd)
        self._bytes += len(data)
        if self._bytes > MAX_CONFIG_BYTES:      # grew since fstat
            raise LimitExceeded(where or (path, 0),
                                f"configuration larger than {MAX_CONFIG_BYTES >> 20} MiB")
        return data

    def _read_lines(self, path: str, physical: list[str]) -> None:
        i, n = 0, len(physical)
        while i < n:
            where = (path, i + 1)
            text = strip_comment(physical[i])
            i += 1
            m = _DEF.match(text) if "$" in text else None
            if m and m.group(2).strip() == "\\":
                # Multi-line definition: following lines up to one not ending in '\'.
                value = []
                while i < n:
                    part = strip_comment(physical[i]).rstrip()
                    i += 1
                    if part.endswith("\\"):
                        value.append(part[:-1])
                    else:
                        value.append(part)
                        break
                self.defs[m.group(1)] = value
                continue
            stripped = text.strip()
            if not stripped:
                continue
            first = stripped.split(None, 1)[0]
            if first in INCLUDES:
                self._include(first, stripped[len(first):].strip(), where)
                continue
            self.process(text, where, 0)

    def _include(self, kind: str, arg: str, where: Where) -> None:
        try:
            # Not tokenize(): braces in an include pattern are csh alternatives.
            words = tokenize(arg) if arg[:1] in "\"'" else arg.split()
        except ValueError as e:
            self.report.error(where, str(e))
            return
        if len(words) != 1:
            self.report.error(where, f"{kind} takes exactly one file name")
            return
        pattern = words[0]
        if not os.path.isabs(pattern):
            pattern = os.path.join(self._pwd, pattern)
        matched: list[str] = []
        for p in expand_braces(pattern):
            hits = sorted(glob.glob(p))
            # keepalived 2.2.7 fails on a brace alternative that matches nothing
            # ("Some config files missing"), even for plain include.
            if not hits and kind in ("include", "includeb", "includea") and p != pattern:
                self.report.error(where, f"{kind}: {p} (from brace expansion) matches no file")
            matched.extend(hits)
        wildcard = glob.has_magic(pattern)
        if not matched:
            # keepalived: plain include is silent; includem errs unless wildcards,
            # includew/includea always (keepalived.conf(5) include_check).
            if kind == "include" or (kind in ("includer", "includem", "includeb") and wildcard):
                self.report.warn(where, f"include {words[0]}: no file matches")
            else:
                self.report.error(where, f"{kind} {words[0]}: no file matches")
            return
        for f in matched:
            if os.path.isdir(f):
                continue
            if kind != "include" and not os.access(f, os.R_OK):
                self.report.error(where, f"{kind}: {f} is not readable")
                continue
            self.read_file(f, where)

    # -- one logical line ----------------------------------------------------
    def process(self, text: str, where: Where, depth: int) -> None:
        if depth:                       # physical lines were counted when read
            self._count += 1
            if self._count > MAX_LINES:
                raise LimitExceeded(where, f"more than {MAX_LINES} lines after expansion")
        if depth > MAX_SUBST_PASSES:
            self.report.error(where, "parameter substitution nests too deeply")
            return
        stripped = text.lstrip()
        if stripped.startswith("@"):
            m = _COND.match(stripped)
            assert m is not None        # _COND matches any text starting with "@"
            if (m.group(2) == self.config_id) == bool(m.group(1)):
                return
            text = stripped = m.group(3)
        m = _DEF.match(text) if "$" in text else None
        if m:
            self.defs[m.group(1)] = m.group(2).strip()
            return
        if stripped.startswith("~"):
            self._generate(stripped, where, depth)
            return
        if "$" in text:
            new = self._substitute(text, where)
            if new is None:
                return
            if new != text:
                subs = [sub for sub in new.split("\n") if sub.strip()]
                self._expand(subs, where, depth)
                return
        try:
            tokens = tokenize(text)
        except ValueError as e:
            self.report.error(where, str(e))
            return
        if ("\0" in text or "\\" in text) and any("\0" in t for t in tokens):
            # A path or argument with a NUL cannot reach the kernel (exec, open, netlink).
            self.report.error(where, "NUL byte in a word")
            return
        if tokens:
            self._tokens += len(tokens)
            if self._tokens > MAX_TOKENS:
                raise LimitExceeded(where, f"more than {MAX_TOKENS} words")
            self._chars += len(text)
            if self._chars > MAX_TEXT:
                raise LimitExceeded(where,
                                    f"more than {MAX_TEXT >> 20} MiB of text after expansion")
            self.lines.append((where, tokens))

    def _expand(self, subs: list[str], where: Where, depth: int) -> None:
        """Process the lines a multi-line $NAME became, bounding nested expansions."""
        if self._generated * len(subs) > MAX_GENERATED:
            raise LimitExceeded(where, f"nested expansions make more than {MAX_GENERATED} lines")
        outer, self._generated = self._generated, self._generated * max(1, len(subs))
        try:
            for sub in subs:
                self.process(sub, where, depth + 1)
        finally:
            self._generated = outer

    def _lookup(self, name: str, args: str | None) -> str | list[str] | None:
        if name == "_PWD":
            return self._pwd
        if name == "_INSTANCE":
            return self.config_id
        if name == "_HASH":
            return "#"
        if name == "_BANG":
            return "!"
        if name == "_RANDOM":
            lo, hi = 0, 32767
            nums = (args or "").split()
            try:
                if nums:
                    lo = int(nums[0])
                if len(nums) > 1:
                    hi = int(nums[1])
            except ValueError:
                return None
            return str(random.randint(min(lo, hi), max(lo, hi)))
        return self.defs.get(name)

    def _substitute(self, text: str, where: Where) -> str | None:
        """Replace defined parameters until none is left (keepalived substitutes
        at use, recursively); stops after a pass that inserted a multi-line value
        so that definitions inside it take effect line by line."""
        for _ in range(MAX_SUBST_PASSES):
            multiline = False

            def repl(m: re.Match) -> str:
                nonlocal multiline
                name = m.group(1) or m.group(3)
                value = self._lookup(name, m.group(2))
                if value is None:
                    return m.group(0)
                if isinstance(value, list):
                    multiline = True
                    return "\n".join(value)
                return value

            new = _REF.sub(repl, text)
            if len(new) > MAX_LINE_CHARS:
                raise LimitExceeded(where, f"line longer than {MAX_LINE_CHARS} characters "
                                           "after parameter substitution")
            if new == text or multiline:
                return new
            text = new
        self.report.error(where, "parameter substitution does not terminate "
                                 "(a definition refers to itself?)")
        return None

    def _generate(self, text: str, where: Where, depth: int) -> None:
        """~SEQ(var, [start,] [step,] end) / ~SEQx(...) / ~LST(var|{vars}, values...) rest."""
        m = _GEN.match(text)
        close = _matching_paren(text, m.end() - 1) if m else -1
        if m is None or close < 0:
            self.report.error(where, "malformed ~SEQ/~LST line")
            return
        kind, inner, rest = m.group(1), text[m.end():close], text[close + 1:]
        parts = _split_top(inner)
        try:
            if kind == "LST":
                names = [v.strip() for v in parts[0].strip("{}").split(",")]
                table = [[v.strip() for v in p.strip("{}").split(",")] for p in parts[1:]]
                if not table or any(len(r) != len(names) for r in table):
                    raise ValueError
                rows: Iterable[list[str]] = table
                count = len(table)
            else:
                names = [parts[0]]
                nums = [int(p, 0) for p in parts[1:]]
                if len(nums) == 1:
                    end = nums[0]
                    start, step = (1 if end > 0 else -1), (1 if end > 0 else -1)
                elif len(nums) == 2:
                    start, end = nums
                    step = 1 if end >= start else -1
                elif len(nums) == 3:
                    start, step, end = nums
                else:
                    raise ValueError
                if step == 0:
                    raise ValueError
                fmt = "{:x}" if kind == "SEQx" else "{:d}"
                stop = end + (1 if step > 0 else -1)
                values = range(start, stop, step)
                if len(values) > MAX_GENERATED:
                    raise LimitExceeded(where, f"~{kind} generates more than {MAX_GENERATED} lines")
                # Formatted as they go: a limit met half-way formats no more.
                rows = ([fmt.format(v)] for v in values)
                count = len(values)
        except (ValueError, IndexError):
            self.report.error(where, f"malformed ~{kind}(...) specification")
            return
        if self._generated * count > MAX_GENERATED:
            raise LimitExceeded(where, f"nested expansions make more than {MAX_GENERATED} lines")
        saved = {n: self.defs.get(n) for n in names}
        outer, self._generated = self._generated, self._generated * count
        try:
            for row in rows:
                for n, v in zip(names, row):
                    self.defs[n] = v
                self.process(rest, where, depth + 1)
        finally:
            self._generated = outer
        for n, old in saved.items():
            if old is None:
                self.defs.pop(n, None)
            else:
                self.defs[n] = old


def _regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and not st.st_mode & 0o111


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        depth += (text[i] == "(") - (text[i] == ")")
        if depth == 0:
            return i
    return -1


def read(path: str, report: Report, config_id: str) -> tuple[list[Line], list[str]]:
    """All logical lines of `path` and the files it includes, and the files read."""
    lx = Lexer(report, config_id)
    try:
        lx.read_file(path)
    except LimitExceeded as e:
        report.error(e.where, str(e))
    return lx.lines, lx.files
