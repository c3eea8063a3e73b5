"""What an application's replicas are built from: the one thing the builders hand the deployments.

Its own module, so that the deployments import it without importing the builders
(which import the deployments).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config


@dataclass
class AppSpec:
    """Everything a replica needs, carried with the application rather than read from one node's disk."""

    cfg: Config
    #: task -> profiles (their JSON form)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    recorded_dir: str | None = None
