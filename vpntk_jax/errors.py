"""Error types. Every user-facing failure is a `VpntkError` with a message that names the problem."""


class VpntkError(Exception):
  """Base class: the CLI prints the message and exits non-zero, without a traceback."""


class DataError(VpntkError, ValueError):
  """The input images or labels are missing, unreadable or malformed."""


class MissingSplitError(DataError):
  """The source holds no such split (a file or folder of one split only)."""


class ConfigError(VpntkError, ValueError):
  """A parameter (epsilon, delta, steps, ...) is out of its valid range."""


class RunDirError(VpntkError):
  """The run directory cannot be used as asked (exists, incompatible, incomplete)."""
