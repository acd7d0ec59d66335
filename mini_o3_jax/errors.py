"""One exception family for bad input, so callers can catch ours without catching bugs.

Every error names the input (file, field, key) and says what was expected.
"""


class MiniO3Error(Exception):
    """Base class for errors caused by bad input to mini_o3_jax."""


class ConfigError(MiniO3Error, ValueError):
    """A model or experiment config is inconsistent or incomplete."""


class CheckpointError(MiniO3Error, ValueError):
    """A checkpoint file or directory is missing, truncated or does not match the model."""


class ImageError(MiniO3Error, ValueError):
    """An image cannot be decoded or violates a size/aspect rule."""


class ChatFormatError(MiniO3Error, ValueError):
    """A conversation or its image placeholders do not line up."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's files cannot be read back as written (truncated, deleted or altered data).

    Separate from a plain `CheckpointError` (e.g. a model/config mismatch) so that resume can skip a damaged
    checkpoint and fall back to an older one, but never silently skip one that is merely incompatible."""
