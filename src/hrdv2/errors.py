"""Exceptions that reach users.

Every error a user can cause (bad file, bad shape, bad value, missing weights) is one of
these, with a message that names the file / shape / value and says how to fix it. The CLI
prints the message without a traceback; library users can catch ``HRDv2Error``.
"""

from __future__ import annotations


class HRDv2Error(ValueError):
    """Base class: a problem with the user's input or set-up, not a bug in hrdv2."""


class ImageReadError(HRDv2Error):
    """An image or label file is missing, unreadable, or of an unsupported kind."""


class ShapeError(HRDv2Error):
    """Arrays whose shapes do not fit together (image vs scribble, stack pages...)."""


class ConfigError(HRDv2Error):
    """A parameter value that is out of range or unknown (stride, shift, backbone name...)."""


class WeightsUnavailableError(HRDv2Error):
    """Pretrained weights could not be obtained (offline, no local file) or failed a check."""


class ModelFileError(HRDv2Error):
    """A saved model file is corrupt, untrusted, or does not fit the data it is applied to."""


class CheckpointError(ModelFileError, WeightsUnavailableError):
    """A checkpoint (weights, probe head, training state) that is missing, unreadable or would run
    code when loaded (``hrdv2.checkpoints``); both a bad model file and weights not to be had."""


class ResourceLimitError(HRDv2Error):
    """The work would need more memory than this machine (or the configured budget) allows."""


class ImageTooLargeError(ImageReadError, ResourceLimitError):
    """An image whose declared size would not fit the decode budget; refused before decoding."""


class OutputPathError(HRDv2Error):
    """An output path that cannot be written (parent is a file, read-only folder, file/folder mix-up)."""
