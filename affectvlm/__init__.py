"""AffectVLM: 3D/4D facial expression recognition from face meshes with a CLIP vision-language model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("affectvlm")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
