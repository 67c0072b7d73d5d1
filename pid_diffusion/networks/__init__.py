"""EDM's networks with EDM's keywords, forward signatures and state-dict keys."""

from .edm_precond import MODEL_TYPES, EDMPrecond, edm_scalings, network_from_config
from .layers import (Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock,
                     weight_init)
from .unets import DhariwalUNet, SongUNet

__all__ = ["Conv2d", "DhariwalUNet", "EDMPrecond", "FourierEmbedding", "GroupNorm", "Linear",
           "MODEL_TYPES", "PositionalEmbedding", "SongUNet", "UNetBlock", "edm_scalings", "network_from_config",
           "weight_init"]
