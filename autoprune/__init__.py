"""autoprune: automated neural-network compression search.

Importing the package registers the Gymnasium environment ``autoprune/Prune-v0``; heavy
dependencies (torch, Torch-Pruning, SB3, Ray, onnxruntime) load only with the modules that use them.
"""

import gymnasium as _gym

__version__ = "0.1.0"

if "autoprune/Prune-v0" not in _gym.registry:
    _gym.register(id="autoprune/Prune-v0", entry_point="autoprune.envs.prune_env:PruneEnv")
