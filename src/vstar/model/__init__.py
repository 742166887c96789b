"""The model stage: the generator over SID tokens, its vocabulary, and the value head.

    config.py     ModelConfig (generator size), ValueHeadConfig (torch-free)
    vocab.py      SidVocab: SID codes <-> token ids, left-padded history prompts
    generator.py  SidGenerator (decoder-only transformer with a KV cache), save / load
    interface.py  SidLM: the one call decoders and trainers make, so another backbone fits
    value.py      ValueHead V_phi on the generator's hidden states
"""

from vstar.model.config import ModelConfig, ValueHeadConfig
from vstar.model.generator import (GeneratorOutput, KVCache, SidGenerator, load_generator,
                                   make_vocab, new_generator, save_generator)
from vstar.model.interface import SidLM
from vstar.model.value import ValueHead
from vstar.model.vocab import BOS, PAD, SidVocab

__all__ = ["BOS", "GeneratorOutput", "KVCache", "ModelConfig", "PAD", "SidGenerator", "SidLM",
           "SidVocab", "ValueHead", "ValueHeadConfig", "load_generator", "make_vocab",
           "new_generator", "save_generator"]
