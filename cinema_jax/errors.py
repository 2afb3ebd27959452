"""The project's errors, in one place: each is reported to the user in one line that names the file,
record, config field or flag at fault and what was expected (the commands print `error: <message>`)."""


class ConfigError(ValueError):
  """A config field has a value the run cannot use; the message names the field."""


class DataError(Exception):
  """A dataset problem a user can fix (missing path, wrong schema); the message names the file."""


class BadRecordError(DataError):
  """One record is malformed; the message names the shard and the record."""


class MeshError(ValueError):
  """The mesh in the config does not fit the devices."""


class DistributedError(ValueError):
  """Inconsistent multi-process flags; the message names them."""


class CheckpointError(Exception):
  """A checkpoint cannot be read, or what it holds differs from the checksums written when it was saved; the
  message names the step and folder."""


class TrainingError(RuntimeError):
  """The run cannot go on (non-finite loss, failed save); the message says why and what is safe."""
