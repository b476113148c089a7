"""ntk-selector: pick auxiliary fine-tuning data for a low-resource domain with NTK-Selector.

The public face (README, "From Python"): ``select`` returns a ``Selection``; ``index`` indexes a
pool once for many domains; ``embed``, ``featurize``,
``load_features``, ``score``, ``train`` and ``evaluate`` run one stage each; the config classes hold
every setting's default; ``UserError`` is what bad input raises.

The API functions load on first use, so importing one module of the package (the projection, a
store reader) does not load torch, transformers and datasets with the whole API.
"""

from typing import TYPE_CHECKING, Any

from ntk_selector.config import (
    DataConfig,
    DiagnoseConfig,
    EmbedConfig,
    FeatureConfig,
    IndexConfig,
    LoraSettings,
    ModelConfig,
    PoolFilterConfig,
    PredictConfig,
    PreselectConfig,
    RunConfig,
    ScoreConfig,
    TrainConfig,
)
from ntk_selector.errors import DataError, UserError
from ntk_selector.version import __version__

__all__ = [
    "__version__",
    "select",
    "Selection",
    "index",
    "embed",
    "featurize",
    "load_features",
    "score",
    "train",
    "evaluate",
    "ModelConfig",
    "DataConfig",
    "LoraSettings",
    "RunConfig",
    "TrainConfig",
    "FeatureConfig",
    "PreselectConfig",
    "IndexConfig",
    "EmbedConfig",
    "ScoreConfig",
    "PoolFilterConfig",
    "DiagnoseConfig",
    "PredictConfig",
    "UserError",
    "DataError",
]

_API = ("select", "Selection", "index", "embed", "featurize", "load_features", "score", "train", "evaluate")

if TYPE_CHECKING:
    from ntk_selector.api import Selection, embed, evaluate, featurize, index, load_features, score, select, train


def __getattr__(name: str) -> Any:
    if name in _API:
        from ntk_selector import api

        value = getattr(api, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'ntk_selector' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
