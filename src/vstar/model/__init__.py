"""The generator over SID tokens and its vocabulary."""

from vstar.model.generator import GeneratorConfig, GeneratorOutput, KVCache, SidGenerator
from vstar.model.interface import SidLM
from vstar.model.vocab import BOS, PAD, SidVocab

__all__ = ["BOS", "GeneratorConfig", "GeneratorOutput", "KVCache", "PAD", "SidGenerator",
           "SidLM", "SidVocab"]
