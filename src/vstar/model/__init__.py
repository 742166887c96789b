"""The model stage: the generator over SID tokens, its vocabulary, and the value head.

    config.py     ModelConfig (generator size), ValueHeadConfig (torch-free)
    vocab.py      SidVocab: SID codes <-> token ids, left-padded history prompts
    generator.py  SidGenerator (decoder-only transformer with a KV cache), save / load
    cache.py      KVCache (per row), SharedKVCache (one history per user + per-beam suffixes)
    interface.py  SidLM: the one call decoders and trainers make, so another backbone fits
    value.py      ValueHead V_phi on the generator's hidden states
"""

from vstar.model.cache import KVCache, SharedKVCache
from vstar.model.config import ModelConfig, ValueHeadConfig
from vstar.model.generator import (GeneratorOutput, SidGenerator, load_generator, make_vocab,
                                   new_generator, save_generator)
from vstar.model.interface import SidLM, rows_cache, shares_history
from vstar.model.value import ValueHead
from vstar.model.vocab import BOS, PAD, SidVocab

__all__ = ["BOS", "GeneratorOutput", "KVCache", "ModelConfig", "PAD", "SharedKVCache",
           "SidGenerator", "SidLM", "SidVocab", "ValueHead", "ValueHeadConfig", "load_generator",
           "make_vocab", "new_generator", "rows_cache", "save_generator", "shares_history"]
