"""``python -m nb2svc.cli``: what the git hooks run."""

import sys

from . import main

sys.exit(main())
