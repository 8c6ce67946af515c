"""Small reusable layers shared by every sdzoo model family."""
from .stochastic_depth import (
    SD_MODES, SD_SCALINGS, SD_SCHEDULES, SDSampler, StochasticDepth, apply_stochastic_depth,
    sd_blocks, sd_modules, sd_settings, set_sd_seed, survival_schedule, track_forwards,
)
from .shortcut import AvgPoolPadShortcut
from .drop_path import SkippingDropPath, drop_prob_of
