"""ntk-selector: pick auxiliary fine-tuning data for a low-resource domain with NTK-Selector.

The public face (README, "From Python"): ``select`` returns a ``Selection``; ``index`` indexes a
pool once for many domains; ``embed``, ``featurize``,
``load_features``, ``score``, ``train`` and ``evaluate`` run one stage each; the config classes hold
every setting's default; ``UserError`` is what bad input raises.
"""

from ntk_selector.api import Selection, embed, evaluate, featurize, index, load_features, score, select, train
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
    "select", "Selection", "index", "embed", "featurize", "load_features", "score", "train", "evaluate",
    "ModelConfig", "DataConfig", "LoraSettings", "RunConfig", "TrainConfig", "FeatureConfig", "PreselectConfig",
    "IndexConfig", "EmbedConfig", "ScoreConfig", "PoolFilterConfig", "DiagnoseConfig", "PredictConfig",
    "UserError", "DataError",
]
