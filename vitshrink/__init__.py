"""vitshrink: search the compression configurations of a vision transformer that are Pareto-optimal
in accuracy, latency on the target hardware and size, and hand back those models ready to deploy."""

from ._version import __version__
from .spaces import CompressionConfig, Recipe, SearchSpace
from .studies import export, list_studies, load_model, open_study

__all__ = ["CompressionConfig", "Recipe", "SearchSpace", "__version__", "load_model", "open_study", "list_studies",
           "export"]
