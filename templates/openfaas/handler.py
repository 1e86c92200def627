"""python3-http's handler for a notebook compiled by nb2svc: ``handle(event, context)``."""

from nb2svc.backends.openfaas import handle

__all__ = ["handle"]
