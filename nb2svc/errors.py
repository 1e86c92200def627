"""One error root for the whole pipeline; the CLI maps these to messages and exit codes."""

from __future__ import annotations


class Nb2svcError(Exception):
    """An expected failure with a message the user can act on.

    ``exit_code`` follows the CLI contract: 1 the user's input is wrong, 3 an external
    system failed.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class NotebookError(Nb2svcError):
    """The notebook file cannot be read or breaks the notebook contract."""


class SpecError(NotebookError):
    """A parameter or output cannot be typed."""


class ExternalError(Nb2svcError):
    """Something outside nb2svc failed: a service, Docker, a registry."""

    exit_code = 3


class CallError(Nb2svcError):
    """A service answered a call with an error that the caller can fix."""


class RegistryError(ExternalError):
    """A push, pull or registry API call failed: the registry is unreachable or refused."""
