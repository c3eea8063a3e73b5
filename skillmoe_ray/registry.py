"""Name -> factory maps for the parts a deployment file picks by name (RouteLLM's registry, keyed by config).

Routers (``routing.strategy``) and aggregators (``aggregation.mode``) each keep one; a new part is one
decorated class whose ``from_config(section, profiles)`` builds it.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from .errors import ConfigError

C = TypeVar("C", bound=type)


class Registry(dict[str, Callable[..., Any]]):
    """Maps a config value to how to build that part; itself a dict, so ``set(REGISTRY)`` lists the names."""

    def __init__(self, kind: str, field: str, attr: str):
        super().__init__()
        #: what is registered ("router"), the config field naming it ("routing.strategy"), and the class
        #: attribute the registered name is kept in ("strategy")
        self.kind, self.field, self.attr = kind, field, attr

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: ``self[name]`` builds the class through its ``from_config``."""

        def register(cls: C) -> C:
            if name in self:
                raise ValueError(f"a {self.kind} is already registered as {name!r}")
            setattr(cls, self.attr, name)
            self[name] = cls.from_config  # type: ignore[attr-defined]
            return cls

        return register

    def make(self, name: str, *args: Any) -> Any:
        """The part the config names, or an error listing the known names."""
        try:
            factory = self[name]
        except KeyError:
            raise ConfigError(f"unknown {self.field} {name!r}; known: {', '.join(self)}") from None
        return factory(*args)
