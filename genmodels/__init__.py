"""Small real generative models for the factory: class-conditional defect-image diffusion models and
production-report text generators, trained here on data this package generates, exported to ONNX
and run with onnxruntime (``genmodels.runtime``, no torch).

Layout:
- ``tiers``: the size tiers (s, m, l, xl) of both kinds and their names in the factory preset.
- ``data``: the seeded synthetic data generators (numpy only).
- ``tokens``: the report tokenizer (numpy-free, pure Python), shared by training and runtime.
- ``schedule``: the diffusion noise schedule and DDIM step rule (numpy only).
- ``png``: a tiny PNG encoder/decoder (zlib only).
- ``runtime``: ``ImageGenerator``, ``TextGenerator``, sha256-checked loading (numpy + onnxruntime).
- ``train_image``, ``train_text``: training and ONNX export (the only modules that import torch).
- ``build``: trains all eight models, writes ``catalog.yaml`` and ``provenance.json``.
- ``calibrate``: measures s/step and s/token and writes Gcycles per unit into the factory preset.
"""
