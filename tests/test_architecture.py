"""The package layout holds: stages only import earlier stages; one module spells each format.

These tests read the sources (every ``import``, also inside functions) rather than trusting a
diagram, so a shortcut that points upward fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vstar"

# The pipeline's stages in order (docs ARCHITECTURE.md); a module may import its own stage and
# the stages before it. core/ is the foundation of every stage; testing.py serves the tests.
STAGES = {
    "core": 0, "data": 1, "sid": 2, "model": 3, "decode": 4, "train": 5, "baselines": 5,
    "eval": 6, "experiments": 7, "serve": 7, "__main__": 7, "testing": 8,
}


def _stage(module: str) -> str:
    """'vstar.decode.ved' -> 'decode'; 'vstar' -> '' (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _vstar_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("vstar")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vstar"):
            if node.module == "vstar":            # from vstar import x -> vstar.x
                found += [(node.lineno, f"vstar.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


SOURCES = sorted(SRC.rglob("*.py"))


def test_every_module_belongs_to_a_known_stage():
    unknown = {_stage(_module_name(p)) for p in SOURCES} - set(STAGES) - {""}
    assert not unknown, f"add these folders to STAGES (and to ARCHITECTURE.md): {unknown}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_later_stage(path):
    here = _stage(_module_name(path))
    if here == "":                              # vstar/__init__.py: the version only
        assert not _vstar_imports(path)
        return
    upward = [f"line {line}: {mod} ({_stage(mod)} comes after {here})"
              for line, mod in _vstar_imports(path)
              if _stage(mod) and STAGES[_stage(mod)] > STAGES[here]]
    assert not upward, "\n".join(upward)


def test_the_checker_catches_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"                  # as if it were vstar/model/probe.py
    probe.write_text("import numpy\n\ndef f():\n    from vstar.train.rl import RLTrainer\n")
    assert _vstar_imports(probe) == [(4, "vstar.train.rl")]
    assert STAGES[_stage("vstar.train.rl")] > STAGES[_stage("vstar.model.probe")]


# --------------------------------------------------------------------------- one owner per format

def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Source lines outside docstrings and comments (string literals in code are kept)."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    doc_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return [(i, line.split("#")[0]) for i, line in enumerate(text.splitlines(), start=1)
            if i not in doc_lines]


RUN_FILES = re.compile(r"""["'](config\.yaml|versions\.json|seed\.txt|log\.txt|metrics\.json|"""
                       r"""status\.json|provenance\.json|"""
                       r"""ranks_|(generator|sasrec|rl_state|sft_state)\.safetensors|rl_config\.json|rl_log\.jsonl|"""
                       r"""sft_history\.json|sid\.index\.json|sid_report\.json|sid_key\.json|"""
                       r"""artifacts["'/]|stage_seconds\.json|results\.md|text-emb-|seed\{|"""
                       r"""report\.html|budget_\{|events\.out\.tfevents)""")
CHECKPOINT_KEYS = re.compile(r"""["'](policy\.|value\.|opt\.|sampler_rng|torch_rng|best\.|vstar_kind|"""
                             r"""generator_config|model_config|numpy_rng|lr_schedule)["']""")


def _spelled(pattern: re.Pattern, owner: str) -> list[str]:
    hits = []
    for path in SOURCES:
        if path.relative_to(SRC).as_posix() == owner:
            continue
        for i, line in _code_lines(path):
            if pattern.search(line):
                hits.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    return hits


def test_run_folder_paths_are_spelled_only_in_the_layout_module():
    assert not _spelled(RUN_FILES, "core/layout.py")


def test_checkpoint_keys_are_spelled_only_in_the_checkpoint_module():
    assert not _spelled(CHECKPOINT_KEYS, "core/checkpoint.py")


def test_one_sid_string_parser():
    parsers = [f"{p.relative_to(SRC)}:{i}" for p in SOURCES for i, line in _code_lines(p)
               if re.search(r"re\.compile\(r?[\"'][^\"']*<\[?a-z", line)]
    assert parsers and all(p.startswith("sid/tokens.py") for p in parsers), parsers
