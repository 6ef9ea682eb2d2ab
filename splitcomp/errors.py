"""Errors a user can cause. Entry points print their message as one sentence, no traceback."""


class SplitcompError(Exception):
    """A problem with the user's input (config, trace file, model, peer) that they can fix."""


class ConfigError(SplitcompError):
    """A bad or inconsistent configuration value."""


class TraceError(SplitcompError):
    """A channel or load trace file that cannot be read."""


class ModelError(SplitcompError):
    """A model that cannot be built, loaded or traced."""


class PeerError(SplitcompError):
    """A network peer that is unreachable, misbehaving or incompatible."""
