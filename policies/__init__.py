"""aigc_offload policies: paper-faithful simulators, the one cost model, baselines and evaluation.

Training code (torch) lives in modules that are imported only by the training commands; nothing
imported by ``policies`` at package level needs torch.
"""

__version__ = "0.1.0"
