"""vitshrink: search the compression configurations of a vision transformer that are Pareto-optimal
in accuracy, latency on the target hardware and size, and hand back those models ready to deploy."""

from ._version import __version__
from .spaces import CompressionConfig, Recipe, SearchSpace  # noqa: E402


def __getattr__(name: str):
    # studies pulls in torch, timm and optuna: import it on first use so `import vitshrink` stays light
    if name in ("load_model", "open_study", "list_studies", "export"):
        from . import studies

        return getattr(studies, name)
    raise AttributeError(f"module 'vitshrink' has no attribute {name!r}")


__all__ = ["CompressionConfig", "Recipe", "SearchSpace", "__version__", "load_model", "open_study", "list_studies",
           "export"]
