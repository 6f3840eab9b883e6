"""The codec's error hierarchy: one base, each subclass also a matching built-in."""


class GraceError(Exception):
    """Base of every error gracecodec raises on purpose; the CLI prints it in one line."""


class BitstreamError(GraceError, ValueError):
    """A .agc stream or packet is malformed (bad magic, CRC mismatch, bad field)."""


class TruncatedError(BitstreamError):
    """A .agc stream or packet ends before a declared field or payload does."""


class UnsupportedVersionError(BitstreamError):
    """The stream was written by a newer major version of the format."""


class InputError(GraceError, ValueError):
    """An input video is unreadable, empty, or holds no usable face."""


class OutputError(GraceError, OSError):
    """An output file cannot be written."""


class BackendUnavailableError(GraceError, ImportError):
    """A generator backend cannot run here; the message says how to make it available."""


class ModelMismatchError(GraceError, ValueError):
    """The stream names a model (id, digest) that the chosen backend does not have."""


class DeviceError(GraceError, RuntimeError):
    """An accelerator (C simulation, PYNQ board) failed or timed out."""
