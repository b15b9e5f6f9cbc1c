"""Problems found while loading a configuration, each pointing at FILE:LINE."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_KEPT = 1000                  # errors (and warnings) kept: a hostile file could make millions
Where = tuple[str, int]          # (file, line) of the config text a thing came from


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(slots=True)
class Report:
    """Collects errors and warnings; shared by lexer, parser, builder and validator."""
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    dropped: int = 0            # problems beyond MAX_KEPT, counted only

    def error(self, where: Where, message: str) -> None:
        if len(self.errors) >= MAX_KEPT:
            if not self.dropped:
                self.errors.append(Problem(where[0], where[1], "too many errors: the rest "
                                                                "are not shown"))
            self.dropped += 1
            return
        self.errors.append(Problem(where[0], where[1], message))

    def warn(self, where: Where, message: str) -> None:
        if len(self.warnings) >= MAX_KEPT:
            self.dropped += 1
            return
        self.warnings.append(Problem(where[0], where[1], message))


@dataclass(frozen=True, slots=True)
class LoadResult:
    config: Any                  # vrrpd.config.model.Config, or None when there are errors
    errors: list[Problem]
    warnings: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.errors
