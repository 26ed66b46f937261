"""Which model version answers a request: the default, a weighted canary, and an optional shadow copy.

Pure: the Serve replica holds a ``RoutingTable`` built from the serve config and asks it per request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rayml.errors import RequestError


@dataclass(frozen=True)
class ModelRoutes:
    """Routing of one model name."""

    versions: tuple[str, ...]  # every loaded version, ascending
    default: str
    canary: str | None = None
    canary_weight: float = 0.0
    shadow: str | None = None
    shadow_fraction: float = 0.0


@dataclass(frozen=True)
class Choice:
    version: str
    shadow: str | None  # a version that also gets a copy of this request; its answer is discarded


class RoutingTable:
    """Per-model routes; ``choose`` picks the version for one request."""

    def __init__(self, routes: dict[str, ModelRoutes], rng: random.Random | None = None) -> None:
        self.routes = routes
        self.rng = rng or random.Random()

    def models(self) -> list[str]:
        return sorted(self.routes)

    def get(self, model: str) -> ModelRoutes:
        routes = self.routes.get(model)
        if routes is None:
            known = ", ".join(self.models()) or "none"
            raise RequestError(f"unknown model {model!r}; this server has: {known}", status=404)
        return routes

    def choose(self, model: str, version: str | None = None) -> Choice:
        """An explicit ``version`` is honoured as asked (no canary, no shadow); otherwise the canary takes
        ``canary_weight`` of the traffic and the default the rest, and the shadow sees ``shadow_fraction``."""
        routes = self.get(model)
        if version is not None:
            if version not in routes.versions:
                raise RequestError(
                    f"model {model!r} has no version {version!r}; loaded versions: {', '.join(routes.versions)}",
                    status=404,
                )
            return Choice(version, None)
        chosen = routes.default
        if routes.canary is not None and self.rng.random() < routes.canary_weight:
            chosen = routes.canary
        shadow = None
        if routes.shadow is not None and routes.shadow != chosen and self.rng.random() < routes.shadow_fraction:
            shadow = routes.shadow
        return Choice(chosen, shadow)
