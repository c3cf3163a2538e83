"""Exceptions with messages that name the problem and the fix."""

from __future__ import annotations


class NativeRetrieverError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelNotFoundError(NativeRetrieverError, FileNotFoundError):
    """A model name or folder could not be resolved offline."""


class IncompatibleHeadError(NativeRetrieverError, ValueError):
    """A head (or adapter) was trained for another LLM or teacher."""


class FolderFileError(NativeRetrieverError, OSError):
    """A folder the package saves or loads is missing, altered, or not one it wrote (so a save refuses it)."""


class NoShippedHeadError(IncompatibleHeadError):
    """No head shipped with the package was made for the loaded LLM (in the input mode asked for): train one."""


class HeadFileError(FolderFileError):
    """A head folder is missing, its files are unreadable, or its config is invalid (naming the file and field)."""


class HeadConfigError(NativeRetrieverError, ValueError):
    """A head config field has a wrong type or value (see ``HeadConfig.validate``)."""


class IndexFileError(FolderFileError):
    """An index folder is missing or corrupt."""


class ConversationError(NativeRetrieverError, ValueError):
    """A conversation is empty, malformed, or does not end with a user turn."""


class DimensionMismatchError(NativeRetrieverError, ValueError):
    """A vector's dimension does not match the index or head."""


class DataFormatError(NativeRetrieverError, ValueError):
    """A corpus, query or qrels file does not follow docs/data-format.md."""


class DeviceError(NativeRetrieverError, ValueError):
    """A device name is not one torch knows, or names hardware this machine does not have."""


class InvalidArgumentError(NativeRetrieverError, ValueError):
    """An argument is outside what the function accepts (an unknown system or test, a value out of range)."""


class CaptureError(NativeRetrieverError, RuntimeError):
    """A capture was misused: no prefill observed, a prompt that is not the head's format, a reused capture."""


class LatentConfigError(NativeRetrieverError, ValueError):
    """A latent-view setting is out of range (K < 1, a non-positive temperature, a LoRA rank < 1)."""


class InputTypeError(NativeRetrieverError, TypeError):
    """An argument has the wrong type (a bare string where a list of texts is expected)."""


class MissingExtraError(NativeRetrieverError, ImportError):
    """An optional package is not installed; the message names the extra and its pip line."""
