"""Training of the learned agents (torch). Imported only by `aigc-offload train` and by evaluation of a
trained run; nothing in the runtime imports this package, and this ``__init__`` imports no torch."""
