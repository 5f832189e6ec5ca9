"""vqrt: a compiled inference runtime for two-stage VQGAN + transformer image generators.

Packages: vqrt.trainer (models, checkpoints, training), vqrt.export (bundles), vqrt.calibration
(int8), vqrt.runtime (what apps embed; never imports torch). The CLI is vqrt.cli.
"""
__version__ = "0.1.0"
