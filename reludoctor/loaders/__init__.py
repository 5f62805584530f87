"""Model loaders: a file or in-memory model -> LoadedModel."""

from reludoctor.loaders.model import InputSpec, LoadedModel

__all__ = ["InputSpec", "LoadedModel"]
