"""Logical lines -> a tree of statements: `keyword args... [{ children }]`.

keepalived lets a block's `{` sit on the keyword's line or on the next one and
lets a whole block sit on one line (`group { VI_1 VI_2 }` is a value block).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .lexer import Line, Quoted
from .problems import Report, Where


@dataclass(slots=True)
class Node:
    keyword: str
    args: list[str]
    where: Where
    children: list["Node"] | None = None     # None: no block; [] : empty block
    block_where: Where | None = field(default=None)


MAX_BLOCK_DEPTH = 64       # keepalived's blocks nest a few deep; beyond this, reading stops


def parse(lines: list[Line], report: Report) -> list[Node]:
    root: list[Node] = []
    stack: list[tuple[list[Node], Node | None]] = [(root, None)]
    pending: Node | None = None          # last statement, may still open a block

    def flush(words: list[str], where: Where) -> None:
        nonlocal pending
        if words:
            node = Node(words[0], words[1:], where)
            stack[-1][0].append(node)
            pending = node

    for where, tokens in lines:
        words: list[str] = []
        for tok in tokens:
            if tok == "{" and not isinstance(tok, Quoted):
                flush(words, where)
                words = []
                if pending is None or pending.children is not None:
                    report.error(where, "'{' without a keyword before it")
                    pending = Node("{", [], where)      # swallow the block
                if len(stack) > MAX_BLOCK_DEPTH:
                    report.error(where, f"blocks nested more than {MAX_BLOCK_DEPTH} deep")
                    return root
                pending.children = []
                pending.block_where = where
                stack.append((pending.children, pending))
                pending = None
            elif tok == "}" and not isinstance(tok, Quoted):
                flush(words, where)
                words = []
                if len(stack) == 1:
                    report.error(where, "'}' without an open block")
                else:
                    stack.pop()
                pending = None
            else:
                words.append(tok)
        flush(words, where)
    for _, owner in stack[1:]:
        assert owner is not None    # only the root has no owner
        report.error(owner.where, f"block '{owner.keyword}' is not closed (missing '}}')")
    return root
