"""``nb2svc monitor``: reads the prediction log, tests each parameter for drift by its type, measures
performance from feedback, and applies the retrain rule (SPEC section 8).

It runs apart from the services, so it lives outside the runtime: ``nb2svc.runtime`` never imports it, and
scipy is a dependency of the command line, not of the images.
"""

from .config import MonitorConfig, RetrainConfig, Rule, load, parse
from .report import Report, make_report
from .runner import Monitor, create_app

__all__ = ["Monitor", "MonitorConfig", "Report", "RetrainConfig", "Rule", "create_app", "load", "make_report", "parse"]
