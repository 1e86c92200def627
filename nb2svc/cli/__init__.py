"""The command line: a thin layer over the library, one module per command group.

The group and the exception → message → exit code mapping live in :mod:`._base`; each module
below adds its commands to it.
"""

from . import compile, deploy, image, models, monitor, publish  # noqa: F401  # each registers its commands on main
from ._base import main

__all__ = ["main"]
