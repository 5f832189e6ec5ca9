"""vqrt's runtime: load a bundle, generate, encode and decode, without torch.

See runtime/generator.py for the API and its thread-safety model.
"""
from vqrt.runtime.bundle import BundleError
from vqrt.runtime.conditioning import segmentation_one_hot
from vqrt.runtime.first_stage import from_pixels, to_pixels
from vqrt.runtime.generator import Generation, Generator
from vqrt.runtime.params import GenerationParams, GenerationResult, RequestError, StageTimings

__all__ = ["BundleError", "Generation", "GenerationParams", "GenerationResult", "Generator",
           "RequestError", "StageTimings", "from_pixels", "segmentation_one_hot", "to_pixels"]
