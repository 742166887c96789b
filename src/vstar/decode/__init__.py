"""The decode stage: the SID trie as tensors and every decoder over it, batched over users.

    trie.py      SidTrie (allowed next codes per prefix), constrained log-probs and entropy
    beam.py      DecodeResult, prefill, the shared beam step (expand_beams), beam_search
    sampling.py  constrained_sample
    ved.py       Value-Guided Efficient Decoding (budgeted, value-guided tree search)
    config.py    VEDConfig (torch-free)
    scoring.py   teacher-forced log-probs, entropies and hidden states of given candidates
    rank.py      rank_rows: top-k items for many split rows with any of the decoders above
"""

from vstar.decode.beam import DecodeResult, beam_search, expand_beams, prefill
from vstar.decode.config import VEDConfig
from vstar.decode.rank import rank_rows
from vstar.decode.sampling import constrained_sample
from vstar.decode.scoring import CandidateScores, score_candidates
from vstar.decode.trie import SidTrie, constrained_entropy, constrained_log_probs
from vstar.decode.ved import VEDResult, VEDTree, make_ved_decoder, value_guided_decode, ved_budget

__all__ = ["CandidateScores", "DecodeResult", "SidTrie", "VEDConfig", "VEDResult", "VEDTree",
           "beam_search", "constrained_entropy", "constrained_log_probs", "constrained_sample",
           "expand_beams", "make_ved_decoder", "prefill", "rank_rows", "score_candidates",
           "value_guided_decode", "ved_budget"]
