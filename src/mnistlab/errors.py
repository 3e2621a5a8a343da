"""The one exception type the CLI turns into a one-line message and exit code 2."""


class MnistlabError(Exception):
    """A problem with the user's input (data, config, files): reported in one line, no traceback."""


class DataError(MnistlabError):
    """Missing, corrupt, truncated or wrong-checksum data files."""


class ConfigError(MnistlabError):
    """An unknown config key, a value of the wrong type, or a value out of range."""


class DivergenceError(MnistlabError):
    """Training produced a NaN or infinite loss."""
