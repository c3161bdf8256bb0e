"""Config errors: every problem is reported as ``path: message``.

``Problems`` collects them while a document is validated, so that one pass reports every error
(``tunnel config check`` prints them all); ``ConfigError`` carries the list out.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config document is invalid; ``errors`` lists every problem as ``path: message``."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = list(errors)


class Problems:
    """An ordered collection of ``path: message`` strings found while validating."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        """Record that the value at ``path`` is wrong, and why."""
        self.items.append(f"{path}: {message}")

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        """Raise ConfigError with every recorded problem, if there is one."""
        if self.items:
            raise ConfigError(self.items)
