"""Typed errors. Every user-facing failure of dsocr is one of these (never an assert, never sys.exit)."""


class DsocrError(Exception):
    """Base class of every error dsocr raises on purpose."""


class InputError(DsocrError, ValueError):
    """Bad user input: an image, PDF, prompt or option that cannot be used."""


class ImageError(InputError):
    """An image that cannot be decoded, is empty, or is too large."""


class PDFError(InputError):
    """A PDF that is corrupt, encrypted or has no pages."""


class ModeError(InputError):
    """An unknown mode name."""


class CheckpointError(DsocrError):
    """A checkpoint directory that is missing files, keys, or has mis-shaped tensors."""


class ManifestError(DsocrError):
    """A bundle whose manifest is missing, of another format version, or does not match its files."""


BundleError = ManifestError  # the issue tracker's name for it: a bundle that is malformed or does not match


class EngineMismatchError(ManifestError):
    """A TensorRT plan built for another TensorRT version or GPU."""


class CacheOverflowError(InputError):
    """A prompt (or prompt plus generation) longer than the KV cache."""


class BackendUnavailableError(DsocrError, ImportError):
    """An optional backend library is not installed; the message names the extra to install."""


class OutputError(DsocrError):
    """An output directory that cannot be written: disk full, read-only, not a directory."""


class OutputBusyError(OutputError):
    """Another dsocr run holds the output directory's lock."""
