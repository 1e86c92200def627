"""Deploy and operate: one Engine interface, an adapter per cluster engine, and the image catalog.

``engine("swarm")`` gives the Swarm adapter (:mod:`.swarm`); ``--target kubernetes`` writes manifests
(:mod:`.kubernetes`); :mod:`.catalog` reads what a registry's images declare.
"""

from .engine import (
    DeployError,
    Deployment,
    DeployOptions,
    Engine,
    EngineUnavailable,
    PlacementError,
    RolledBack,
    UnknownDeployment,
    engine,
    register,
)
from .labels import ImageInfo

__all__ = [
    "DeployError",
    "DeployOptions",
    "Deployment",
    "Engine",
    "EngineUnavailable",
    "ImageInfo",
    "PlacementError",
    "RolledBack",
    "UnknownDeployment",
    "engine",
    "register",
]
