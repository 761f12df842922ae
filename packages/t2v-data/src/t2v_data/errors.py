"""The one exception type for bad data input (as opposed to `config.ConfigError` for bad config)."""


class DataError(RuntimeError):
    """Bad or missing input data / shard directory; the message is one line naming the file."""
