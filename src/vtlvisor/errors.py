"""Exception types that may leave the hypervisor.

Only *user* errors (bad image, bad option) and *host* configuration errors leave as exceptions; anything
a guest causes is turned into an architectural event inside the run loop and never raises.
"""


class VtlvisorError(Exception):
    """Base class; the CLI prints ``str(err)`` on one line and exits with status 2."""


class ImageError(VtlvisorError):
    """A guest image is missing, unreadable or malformed."""


class ConfigError(VtlvisorError):
    """An invalid option or configuration value given by the user."""


class EngineMismatch(VtlvisorError):
    """The installed Unicorn build is not the one whose internals we know."""
