"""The text forms of a semantic ID: the one parser and writer every file format uses.

    sid_token(1, 200)                 == "<b_200>"
    sid_tokens([12, 200, 7])          == ["<a_12>", "<b_200>", "<c_7>"]   (index.json values)
    format_sid([12, 200, 7])          == "<a_12><b_200><c_7>"             (MiniOneRec CSV cells)
    parse_sid("<a_12><b_200><c_7>")   == parse_sid(["<a_12>", "<b_200>", "<c_7>"]) == [12, 200, 7]
    codes_from_sids([...], codebook_sizes)  -> SemanticIds, one row per SID

The letter names the level (a = first level, b = second, ...; at most 26 levels), the number is
the code. Codebook sizes are not stored in these formats; ``codes_from_sids`` takes, per level,
max code + 1 over the SIDs, or the configured size where one is given; a code outside its
configured codebook is an InputError naming the file and item (never a silent widening).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

from vstar.core.errors import InputError
from vstar.sid.types import SemanticIds

LEVEL_LETTERS = string.ascii_lowercase
_TOKEN_RE = re.compile(r"^<([a-z])_(\d+)>$")
_TOKENS_RE = re.compile(r"<([a-z])_(\d+)>")
_SID_RE = re.compile(r"(?:<[a-z]_\d+>)+")


def sid_token(level: int, code: int) -> str:
    """``sid_token(1, 200) == "<b_200>"``."""
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


def sid_tokens(codes: Sequence[int]) -> list[str]:
    """``[12, 200, 7]`` -> ``["<a_12>", "<b_200>", "<c_7>"]``."""
    if len(codes) > len(LEVEL_LETTERS):
        raise InputError(f"a SID has at most {len(LEVEL_LETTERS)} levels, got {len(codes)}")
    return [sid_token(level, c) for level, c in enumerate(codes)]


def format_sid(codes: Sequence[int]) -> str:
    """``[12, 200, 7]`` -> ``"<a_12><b_200><c_7>"``."""
    return "".join(sid_tokens(codes))


def parse_sid(sid: str | Sequence[str], *, file: str | None = None,
              field: str | None = None) -> list[int]:
    """A SID string ``"<a_12><b_200>"`` or token list ``["<a_12>", "<b_200>"]`` -> codes.

    InputError (naming ``file`` and ``field``) unless every token is ``<letter_number>`` and the
    letters are a, b, c, ... in order.
    """
    if isinstance(sid, str):
        if not _SID_RE.fullmatch(sid):
            raise InputError(f"{sid!r} is not a SID string like '<a_12><b_200><c_7>'",
                             file=file, field=field)
        pairs = _TOKENS_RE.findall(sid)
    else:
        if isinstance(sid, (bytes, dict)) or not isinstance(sid, Sequence) or not sid:
            raise InputError(f"expected a non-empty list of tokens like ['<a_12>', '<b_200>'], "
                             f"got {sid!r}", file=file, field=field)
        pairs = []
        for level, tok in enumerate(sid):
            m = _TOKEN_RE.match(tok) if isinstance(tok, str) else None
            if m is None:
                raise InputError(f"malformed token {tok!r} at level {level}, expected like "
                                 f"{sid_token(min(level, 25), 12)!r}", file=file, field=field)
            pairs.append(m.groups())
    if len(pairs) > len(LEVEL_LETTERS):
        raise InputError(f"a SID has at most {len(LEVEL_LETTERS)} levels, got {len(pairs)}",
                         file=file, field=field)
    codes = []
    for level, (letter, code) in enumerate(pairs):
        if letter != LEVEL_LETTERS[level]:
            raise InputError(f"token {level + 1} of {sid!r} has level letter {letter!r}, "
                             f"expected {LEVEL_LETTERS[level]!r}", file=file, field=field)
        codes.append(int(code))
    return codes


def codes_from_sids(sids: Sequence[str | Sequence[str]],
                    codebook_sizes: Sequence[int] | None = None, *, file: str | None = None,
                    keys: Sequence[str] | None = None) -> SemanticIds:
    """One SID per item (strings or token lists, all with the same number of levels).

    Row i of the result is ``sids[i]``; errors name ``keys[i]`` (or the position). Codebook
    sizes: see the module docstring.
    """
    rows: list[list[int]] = []
    for i, sid in enumerate(sids):
        key = str(keys[i]) if keys is not None else str(i)
        rows.append(parse_sid(sid, file=file, field=key))
        if len(rows[-1]) != len(rows[0]):
            raise InputError(f"expected {len(rows[0])} tokens like the other items, got "
                             f"{len(rows[-1])}", file=file, field=key)
    if not rows:
        return SemanticIds(codes=np.zeros((0, 0), dtype=np.int64), codebook_sizes=[])
    codes = np.asarray(rows, dtype=np.int64)                   # [n_items, n_levels]
    sizes = [int(m) + 1 for m in codes.max(axis=0)]
    if codebook_sizes is not None:
        for level in range(min(len(sizes), len(codebook_sizes))):
            if sizes[level] > int(codebook_sizes[level]):       # never widen a configured level
                i = int(np.argmax(codes[:, level]))
                key = str(keys[i]) if keys is not None else str(i)
                raise InputError(f"code {int(codes[i, level])} at level {level + 1} is outside "
                                 f"the configured codebook of size {int(codebook_sizes[level])} "
                                 f"(codes 0..{int(codebook_sizes[level]) - 1}; set "
                                 "sid.codebook_sizes to the index's sizes)", file=file, field=key)
        sizes = [int(codebook_sizes[l]) if l < len(codebook_sizes) else s
                 for l, s in enumerate(sizes)]
    return SemanticIds(codes=codes, codebook_sizes=sizes)
