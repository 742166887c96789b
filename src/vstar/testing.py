"""Small fixtures for testing decoders and RL code against the generator interface.

    codes, vocab, trie, model, tokens, mask = tiny_setup()   # random catalogue + random model
    codes = random_catalogue(60, sizes=(6, 6, 4))            # distinct random SIDs only
    ... = tiny_setup(backbone="qwen2")                       # the same, through a tiny HF model
    counted = CountingLM(model)                              # counts decode forward tokens
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from vstar.data.types import SplitRows
from vstar.decode.trie import SidTrie
from vstar.model.config import ModelConfig
from vstar.model.generator import SidGenerator
from vstar.model.vocab import SidVocab


class CountingLM(nn.Module):
    """Wraps a generator and counts the tokens fed after the prefill (calls that carry a cache):
    the decode cost of docs/method.md Eq. 10, measured independently of the decoder's own accounting."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.decode_tokens = 0

    @property
    def hidden_size(self) -> int:
        return self.model.hidden_size

    def forward(self, tokens, cache=None, pad_mask=None):
        if cache is not None:
            self.decode_tokens += tokens.numel()
        return self.model(tokens, cache=cache, pad_mask=pad_mask)


def _code_grid(sizes) -> np.ndarray:
    """Every SID of the codebooks ``sizes``: [prod(sizes), L], in lexicographic order."""
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1)
    return grid.reshape(-1, len(sizes))


def random_catalogue(n_items: int = 40, sizes=(4, 5, 3), seed: int = 0) -> np.ndarray:
    """``n_items`` distinct random SIDs [n_items, L] from the code grid of ``sizes``."""
    grid = _code_grid(sizes)
    return grid[np.random.default_rng(seed).choice(len(grid), n_items, replace=False)]


HF_TYPES = ("qwen2", "llama", "gpt2")     # the HF model families the tests build


def tiny_hf_model(vocab: SidVocab, model_type: str = "qwen2", n_layer: int = 2, n_head: int = 2,
                  n_embd: int = 32, max_history: int = 20, seed: int = 0,
                  item_codes=None) -> nn.Module:
    """A randomly initialised tiny Hugging Face backbone (``HFSidLM``) for ``vocab``, built
    from a config (nothing downloaded), in eval mode, without dropout. A vocabulary with item
    tokens gives item-level history (with an item-ID embedding); it needs ``item_codes``."""
    from vstar.model.hf import new_hf_model

    torch.manual_seed(seed)
    items = vocab.item_history
    cfg = ModelConfig(history="items" if items else "codes", item_id_embedding=items,
                      n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=0.0,
                      backbone="hf", hf_config={"model_type": model_type})
    codes = torch.as_tensor(item_codes) if items else None
    return new_hf_model(cfg, vocab, max_history, codes).eval()


@torch.no_grad()
def stepwise_code_logits(model, vocab: SidVocab, item_codes, history, item: int
                         ) -> list[torch.Tensor]:
    """The logits [V] a model gives for each SID level of ``item`` when it is decoded the way
    inference does it: the prompt ``history`` (item indices) first, then the item's codes fed
    one at a time through the cache. Tests compare them with the teacher-forced training forward."""
    prompt, _ = vocab.encode_histories([history], torch.as_tensor(item_codes))
    out = model(prompt)
    logits, cache = [out.logits[0, -1]], out.cache
    for level in range(vocab.n_levels - 1):
        out = model(vocab.token_of(level, torch.tensor([[item_codes[item][level]]])), cache=cache)
        logits.append(out.logits[0, -1])
        cache = out.cache
    return logits


def tiny_setup(n_items: int = 40, sizes=(4, 5, 3), n_users: int = 5, seed: int = 0,
               full: bool = False, history: str = "codes", backbone: str = "vstar"):
    """A random catalogue of distinct SIDs, a 2-layer random generator far from uniform, and
    left-padded prompts of ``n_users`` random histories (1-5 items).

    Returns (codes [N, L], vocab, trie, model, tokens [B, T], pad_mask [B, T]); ``full`` uses every
    SID of the code grid as the catalogue; ``history="items"``: item-level history (one token
    per history item, with a random item-ID embedding); ``backbone``: "vstar" (``SidGenerator``)
    or an HF model type of ``HF_TYPES`` (``tiny_hf_model``).
    """
    rng = np.random.default_rng(seed)
    grid = _code_grid(sizes)
    codes = grid if full else grid[rng.choice(len(grid), n_items, replace=False)]
    trie = SidTrie(codes, list(sizes))
    torch.manual_seed(seed)
    items = history == "items"
    cfg = ModelConfig(history=history, item_id_embedding=items, n_layer=2, n_head=2, n_embd=32,
                      dropout=0.0)
    vocab = SidVocab(list(sizes), n_items=len(codes) if items else 0)
    item_tokens = vocab.code_tokens(torch.as_tensor(codes)) if items else None
    if backbone != "vstar":
        model = tiny_hf_model(vocab, backbone, seed=seed, item_codes=codes)
        with torch.no_grad():
            model.lm.get_input_embeddings().weight.normal_(0, 1.0)    # far from uniform (tied)
            if items:
                model.item_emb.weight.normal_(0, 1.0)
    else:
        model = SidGenerator(cfg, vocab_size=vocab.size, block_size=64,
                             item_code_tokens=item_tokens).eval()
        with torch.no_grad():
            model.wte.weight.normal_(0, 1.0)             # far from uniform
            if items:
                model.item_emb.weight.normal_(0, 1.0)
    histories = [rng.integers(0, len(codes), size=rng.integers(1, 6)) for _ in range(n_users)]
    tokens, mask = vocab.encode_histories(histories, torch.as_tensor(codes))
    return codes, vocab, trie, model, tokens, mask


def write_toy_experiment(path, seeds=(0,), methods=("popularity", "sasrec", "sft", "grpo_beam",
                                                     "vstar")):
    """A tiny synthetic experiment in ``path`` (created): inter.csv (50 users, 8 interactions
    each, walking a 30-item catalogue in steps of 2), items.csv (a price per item), vectors.npy
    (random item vectors for 2-level SIDs) and cfg.yaml (1-layer model, 2 SFT epochs, 3 value
    warm-up + 2 RL steps; experiment ``toy`` in ``path/runs``). Returns ``path``."""
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_items, n_users = 30, 50
    lines = ["user_id,item_id,timestamp"]
    for u in range(n_users):
        start = rng.integers(0, n_items)
        for t in range(8):  # each user walks the catalogue: item (start + 2t) mod n
            lines.append(f"u{u},i{(start + 2 * t) % n_items},{t}")
    (path / "inter.csv").write_text("\n".join(lines) + "\n")
    (path / "items.csv").write_text("item_id,price\n" + "".join(
        f"i{i},{1 + i % 3}\n" for i in range(n_items)))
    vectors = rng.normal(size=(n_items, 8)).astype(np.float32)
    np.save(path / "vectors.npy", vectors)
    (path / "cfg.yaml").write_text(f"""
data: {{format: table, path: {path / 'inter.csv'}, item_path: {path / 'items.csv'},
        name: toy, max_history: 5, value_cols: [price]}}
sid: {{method: rkmeans, codebook_sizes: [4, 4], collisions: reassign,
       vectors_path: {path / 'vectors.npy'}}}
model: {{n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}}
sft: {{max_epochs: 2, val_beam: 5, batch_size: 16}}
sasrec: {{max_epochs: 2, hidden: 16, batch_size: 16}}
rl: {{steps: 2, users_per_step: 8, n_candidates: 4, checkpoint_every: 1, ved: {{init_beam: 2}},
     value_warmup_steps: 3}}
eval: {{beam_width: 10, ks: [1, 5, 10], batch_size: 16}}
run: {{name: toy, out_dir: {path / 'runs'}, cache_dir: {path / 'cache'}, seeds: [{', '.join(map(str, seeds))}],
      methods: [{', '.join(methods)}], progress: false}}
""")
    return path


CHROMIUM = "/usr/bin/chromium"     # Debian's package `chromium` (apt-get install -y chromium)
_CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight}));
  const svgs = [...document.querySelectorAll('svg.tree')].map(s => {
    const r = s.getBoundingClientRect(); return {w: r.width, h: r.height}; });
  const sections = [...document.querySelectorAll('section')].map(s => ({
    id: s.id, h: s.getBoundingClientRect().height}));
  const out = document.createElement('pre');
  out.id = 'vstar-check';
  out.textContent = JSON.stringify({imgs, svgs, sections,
    height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list, timeout: float = 120.0) -> str:
    import subprocess

    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def browser_check(page, workdir) -> dict:
    """Load an HTML page in headless Chromium and measure what it shows: every ``<img>``'s
    decoded size (alt, w, h), every search-tree SVG's rendered size, every ``<section>``'s id
    and height, and the page height. A copy of the page with a measuring script is loaded
    (the page itself has none)."""
    import json
    import re
    from pathlib import Path

    page, workdir = Path(page), Path(workdir)
    probe = workdir / f"{page.stem}.probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _CHECK_SCRIPT
                                                              + "</body>"), encoding="utf-8")
    dom = _chromium(["--dump-dom", probe.resolve().as_uri()])
    found = re.search(r'<pre id="vstar-check">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError("the page's measuring script did not run (no #vstar-check in the DOM)")
    import html as _html

    return json.loads(_html.unescape(found.group(1)))


def browser_screenshot(page, png, width: int = 1400, height: int = 4000) -> None:
    """A PNG of the page's top ``height`` pixels at ``width`` in headless Chromium."""
    from pathlib import Path

    _chromium([f"--screenshot={Path(png).resolve()}", f"--window-size={width},{height}",
               Path(page).resolve().as_uri()])


def toy_rl_world(seed=0, n_items=30, sizes=(4, 4, 4), n_embd=16, ratings=False):
    """A tiny RL world for trainer tests: ``n_items`` distinct 3-level SIDs drawn from the code
    grid, a random 1-layer generator (token-level history, width ``n_embd``), and 40 rows whose
    target is a fixed function of the last history item (with a rating 1-5 per row when
    ``ratings``). Returns (vocab, trie, model, rows)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, 3)
    codes = grid[rng.choice(len(grid), n_items, replace=False)]
    vocab, trie = SidVocab(list(sizes)), SidTrie(codes, list(sizes))
    torch.manual_seed(seed)
    model = SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=n_embd,
                                     dropout=0.0), vocab_size=vocab.size, block_size=64)
    hist = [rng.integers(0, n_items, size=rng.integers(1, 5)) for _ in range(40)]
    targets = np.asarray([(h[-1] * 7 + 3) % n_items for h in hist])
    rows = (SplitRows(np.arange(40), hist, targets, rng.integers(1, 6, size=40).astype(float))
            if ratings else SplitRows(np.arange(40), hist, targets))
    return vocab, trie, model, rows


# ------------------------------------------------------------------------- device audit
_FACTORIES = ("zeros", "ones", "full", "empty", "arange", "tensor", "as_tensor", "eye", "rand",
              "randn", "randint", "randperm", "linspace")
_HOST_SYNCS = ("__int__", "__bool__", "__float__", "tolist", "item", "cpu", "numpy")


class DeviceAudit:
    """Records, while active, the torch calls made from vstar's own source that would be wrong
    or slow on a GPU although they pass on the CPU: tensor factories without ``device=``
    (``torch.zeros(B)`` lands on the CPU whatever the model's device; ``as_tensor`` of a tensor
    is not counted) and host round trips (``int(t)``, ``bool(t)``, ``.item()``, ``.tolist()``,
    ``.cpu()``, ``.numpy()``, which wait for the GPU). Each record is
    ``(kind, call, "module.py:function")``; the CPU tests assert none come from the per-step
    code of the decoders and the RL trainer (``tests/core/test_device.py``).

        with DeviceAudit() as audit:
            beam_search(...)
        audit.factories, audit.syncs        # lists of records
    """

    def __init__(self):
        import os

        import vstar

        self.root = os.path.dirname(os.path.abspath(vstar.__file__))
        self.factories: list[tuple[str, str, str]] = []
        self.syncs: list[tuple[str, str, str]] = []
        self._mode = None

    def _site(self) -> str | None:
        import os
        import sys

        frame = sys._getframe(2)            # the code that made the call (not torch internals)
        name = os.path.abspath(frame.f_code.co_filename)
        if name.startswith(self.root) and not name.endswith("testing.py"):
            return f"{os.path.relpath(name, self.root)}:{frame.f_code.co_name}"
        return None

    def __enter__(self) -> "DeviceAudit":
        from torch.overrides import TorchFunctionMode

        audit = self

        class _Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", "")
                if name in _FACTORIES and kwargs.get("device") is None and not (
                        args and isinstance(args[0], torch.Tensor)):
                    site = audit._site()
                    if site is not None:
                        audit.factories.append(("factory", name, site))
                elif name in _HOST_SYNCS:
                    site = audit._site()
                    if site is not None:
                        audit.syncs.append(("sync", name, site))
                return func(*args, **kwargs)

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def sites(self, records: list[tuple[str, str, str]], under: str = "") -> set[str]:
        """The distinct ``module.py:function`` sites of ``records`` in files under ``under``."""
        return {site for _, _, site in records if site.startswith(under)}
