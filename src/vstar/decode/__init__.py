"""Decoding over the SID trie: the trie as tensors, beam search and sampling (VED is in vstar.rl)."""

from vstar.decode.beam import DecodeResult, beam_search, constrained_sample, prefill
from vstar.decode.trie import SidTrie, constrained_log_probs

__all__ = ["DecodeResult", "SidTrie", "beam_search", "constrained_log_probs",
           "constrained_sample", "prefill"]
