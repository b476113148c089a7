"""ntk-selector: pick auxiliary fine-tuning data for a low-resource domain with NTK-Selector."""

__version__ = "0.1.0"
