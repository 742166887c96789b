"""run.device / run.autocast: resolution and errors (CPU), every tensor of the per-step code on
the model's device (checked on the CPU with ``vstar.testing.DeviceAudit``), and CUDA-only checks
that skip on a machine without a GPU."""

import copy

import numpy as np
import pytest
import torch

from vstar.core.device import autocast, check_autocast, module_device, resolve_device
from vstar.core.errors import InputError
from vstar.decode.beam import beam_search
from vstar.decode.config import VEDConfig
from vstar.decode.sampling import constrained_sample
from vstar.decode.scoring import score_candidates
from vstar.decode.trie import SidTrie
from vstar.decode.ved import value_guided_decode
from vstar.testing import DeviceAudit, tiny_setup, toy_rl_world, write_toy_experiment
from vstar.train.config import RLConfig
from vstar.train.rl import RLTrainer

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available())")


# ------------------------------------------------------------------ resolution and errors (CPU)
def test_auto_is_cuda_when_available_else_cpu():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_an_error_naming_run_device():
    with pytest.raises(InputError, match=r"field 'run.device'.*no CUDA device"):
        resolve_device("cuda")


def test_each_torchrun_process_takes_its_local_rank_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    monkeypatch.setenv("LOCAL_RANK", "5")               # more processes than GPUs
    with pytest.raises(InputError, match=r"field 'run.device'.*LOCAL_RANK 5 has no GPU"):
        resolve_device("cuda")


def test_bf16_autocast_is_for_cuda_only():
    with pytest.raises(InputError, match=r"field 'run.autocast'.*CUDA only"):
        check_autocast("bf16", torch.device("cpu"))
    with pytest.raises(InputError, match=r"field 'run.autocast'"):
        check_autocast("fp16", torch.device("cpu"))
    check_autocast("none", torch.device("cpu"))
    with autocast("cpu", "none"):                       # no region: CPU math unchanged
        assert not torch.is_autocast_enabled("cpu")


def _load(overrides):
    from vstar.experiments.config import load_config

    return load_config(None, ["data.path=x.json"] + overrides)


def test_config_rules_name_the_fields():
    cfg = _load([])
    assert (cfg.run.device, cfg.run.autocast, cfg.sasrec.device) == ("auto", "none", "run")
    for override, field in (("run.device=tpu", "run.device"), ("run.autocast=fp16", "run.autocast"),
                            ("run.device=cuda:0", "run.device")):
        with pytest.raises(InputError, match=f"field '{field}'"):
            _load([override])
    _load(["run.device=cuda", "run.autocast=bf16"])   # checked when a run starts, not here


def test_sasrec_follows_the_run_device_unless_set():
    from vstar.experiments.collab import sasrec_device

    assert sasrec_device(_load(["run.device=cpu"])) == "cpu"
    assert sasrec_device(_load(["sasrec.device=cpu", "run.device=cuda"])) == "cpu"
    assert sasrec_device(_load([]), torch.device("cuda", 1)) == "cuda:1"


def test_module_device():
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert module_device(lambda x: x) == torch.device("cpu")


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without a GPU")
def test_a_run_on_a_missing_gpu_fails_before_any_work(tmp_path):
    from vstar.experiments.config import load_config
    from vstar.experiments.pipeline import run_pipeline

    write_toy_experiment(tmp_path)
    cfg = load_config(tmp_path / "cfg.yaml", ["run.device=cuda"])
    with pytest.raises(InputError, match=r"field 'run.device'"):
        run_pipeline(cfg)
    assert not (tmp_path / "runs").exists()             # no data, SIDs or run folder written
    cfg = load_config(tmp_path / "cfg.yaml", ["run.device=cpu", "run.autocast=bf16"])
    with pytest.raises(InputError, match=r"field 'run.autocast'"):
        run_pipeline(cfg)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ device audit (CPU)
def _decoders(model, vocab, trie, tokens, mask):
    head = torch.nn.Linear(model.hidden_size, 1)
    value = lambda h: head(h).squeeze(-1)                                    # noqa: E731
    cand = beam_search(model, vocab, trie, tokens, mask, 4).codes
    return {
        "beam": lambda: beam_search(model, vocab, trie, tokens, mask, 8),
        "sample": lambda: constrained_sample(model, vocab, trie, tokens, mask, 4,
                                             generator=torch.Generator().manual_seed(0)),
        "ved": lambda: value_guided_decode(model, value, vocab, trie, tokens, mask, 8,
                                           VEDConfig(init_beam=2, budget=24)),
        "score": lambda: score_candidates(model, vocab, trie, tokens, mask, cand),
    }


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_decoders_create_every_tensor_on_the_model_device(layout):
    """A tensor factory without ``device=`` in a decoder would put that tensor on the CPU beside
    a GPU model: none is called, with either trie layout."""
    codes, vocab, _, model, tokens, mask = tiny_setup(n_users=6)
    trie = SidTrie(codes, vocab.codebook_sizes, layout=layout)
    for name, run in _decoders(model, vocab, trie, tokens, mask).items():
        with DeviceAudit() as audit:
            run()
        assert audit.factories == [], (name, audit.factories)


def test_the_audit_catches_a_factory_without_device():
    with DeviceAudit() as audit:
        trie = SidTrie(np.array([[0, 1], [1, 0]]), [2, 2])       # built on the CPU, then .to()
    assert "decode/trie.py:__init__" in audit.sites(audit.factories)


def test_beam_search_and_ved_steps_make_no_host_round_trip():
    """Per decode step, the dense trie, beam search and VED's tree edits never wait for the
    device: beam search reads one number back (its invalid count, after the loop); VED's
    ``add``, ``_fill`` and ``evaluate`` none (its loop control, ``expand`` / ``select``, has
    to)."""
    codes, vocab, trie, model, tokens, mask = tiny_setup(n_users=6)
    runs = _decoders(model, vocab, trie, tokens, mask)
    with DeviceAudit() as audit:
        runs["beam"]()
    assert [s for s in audit.syncs if s[2].startswith("decode/")] == \
        [("sync", "__int__", "decode/beam.py:beam_search")]
    with DeviceAudit() as audit:
        runs["ved"]()
    sites = audit.sites(audit.syncs, "decode/")
    assert sites and not sites & {"decode/ved.py:add", "decode/ved.py:_fill",
                                  "decode/ved.py:evaluate", "decode/ved.py:initial_beam"}


RL_PRESETS = {"beam": {"decoder": "beam"},
              "vstar": {"decoder": "ved", "sibling": True, "value_loss": True,
                        "value_warmup_steps": 0},
              "sample": {"decoder": "sample"},
              "hepo": {"decoder": "beam", "advantage": "hepo", "value_loss": True,
                       "value_gate": "always", "value_diag_every": 0}}


@pytest.mark.parametrize("preset", list(RL_PRESETS))
def test_an_rl_step_creates_its_tensors_on_the_policy_device(preset):
    """Only the prompts (``SidVocab.encode_histories``) and HEPO's history table are built on
    the CPU by design, and moved to the policy's device at once."""
    vocab, trie, model, rows = toy_rl_world()
    trainer = RLTrainer(model, vocab, trie, rows, RLConfig(steps=2, users_per_step=8,
                                                           n_candidates=4, **RL_PRESETS[preset]),
                        max_history=5)
    assert module_device(trainer.value_head) == module_device(trainer.reference) \
        == trainer.device == torch.device("cpu")
    with DeviceAudit() as audit:
        record = trainer.step()
    assert np.isfinite(record["reward_mean"])
    assert audit.sites(audit.factories) <= {"model/vocab.py:encode_histories",
                                            "train/rl.py:_history_codes"}, audit.factories


def test_the_sft_loss_creates_its_tensors_on_the_model_device():
    """The loss of one SFT batch with every option on (trie softmax, label smoothing,
    distillation targets): no tensor factory without ``device=``."""
    from vstar.data.windows import build_windows
    from vstar.train.sft import encode_windows, sft_loss, target_nodes

    vocab, trie, model, rows = toy_rl_world()
    windows, flags = build_windows(rows, 5, "chunks")
    tokens, targets, levels = encode_windows(windows, flags, trie.codes, vocab)
    nodes = target_nodes(targets, levels, vocab, trie)
    code = (targets - torch.tensor(vocab.offsets)[levels]).clamp(min=0)   # the true code
    soft = torch.zeros(*targets.shape, max(vocab.codebook_sizes)).scatter_(-1, code[..., None],
                                                                           1.0)
    with DeviceAudit() as audit:
        loss = sft_loss(model, vocab, tokens, targets, levels, 0.1, trie, nodes, soft, 0.5)
        loss.backward()
    assert torch.isfinite(loss) and audit.factories == [], audit.factories


# ------------------------------------------------------------------ CUDA only
def _cuda_copy(model, trie, codes, vocab):
    return copy.deepcopy(model).cuda(), SidTrie(codes, vocab.codebook_sizes).to("cuda")


@needs_cuda
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_beam_search_on_cuda_equals_the_cpu(layout):
    codes, vocab, _, model, tokens, mask = tiny_setup(n_users=8)
    trie = SidTrie(codes, vocab.codebook_sizes, layout=layout)
    cpu = beam_search(model, vocab, trie, tokens, mask, 10)
    gpu_model = copy.deepcopy(model).cuda()
    gpu_trie = SidTrie(codes, vocab.codebook_sizes, layout=layout).to("cuda")
    gpu = beam_search(gpu_model, vocab, gpu_trie, tokens.cuda(), mask.cuda(), 10)
    assert gpu.items.device.type == "cuda" and gpu.scores.dtype == torch.float32
    assert torch.equal(gpu.items.cpu(), cpu.items)
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=1e-4, atol=1e-4)
    assert gpu.forward_tokens == cpu.forward_tokens and gpu.n_invalid == 0


@needs_cuda
def test_ved_on_cuda_spends_the_same_budget_and_finds_the_same_items():
    codes, vocab, trie, model, tokens, mask = tiny_setup(n_users=8)
    cfg = VEDConfig(init_beam=2, budget=24)
    zero = lambda h: h.new_zeros(h.shape[:-1], dtype=torch.float32)          # noqa: E731
    cpu = value_guided_decode(model, zero, vocab, trie, tokens, mask, 8, cfg)
    gm, gt = _cuda_copy(model, trie, codes, vocab)
    gpu = value_guided_decode(gm, zero, vocab, gt, tokens.cuda(), mask.cuda(), 8, cfg)
    assert torch.equal(gpu.items.cpu().sort(1).values, cpu.items.sort(1).values)
    assert torch.equal(gpu.tokens_per_user.cpu(), cpu.tokens_per_user)


@needs_cuda
def test_bf16_autocast_decodes_the_same_top_items_as_fp32():
    codes, vocab, trie, model, tokens, mask = tiny_setup(n_users=16)
    gm, gt = _cuda_copy(model, trie, codes, vocab)
    fp32 = beam_search(gm, vocab, gt, tokens.cuda(), mask.cuda(), 10)
    with autocast("cuda", "bf16"):
        bf16 = beam_search(gm, vocab, gt, tokens.cuda(), mask.cuda(), 10)
    assert bf16.scores.dtype == torch.float32                # beam scores stay float32
    same_top1 = (bf16.items[:, 0] == fp32.items[:, 0]).float().mean().item()
    assert same_top1 >= 0.9
    overlap = np.mean([len(set(a[:5].tolist()) & set(b[:5].tolist())) / 5
                       for a, b in zip(bf16.items.cpu(), fp32.items.cpu())])
    assert overlap >= 0.8


@needs_cuda
def test_an_sft_step_on_cuda_matches_the_cpu_loss():
    from vstar.data.windows import build_windows
    from vstar.train.sft import encode_windows, sft_loss

    vocab, trie, model, rows = toy_rl_world()
    windows, flags = build_windows(rows, 5, "chunks")
    tokens, targets, levels = encode_windows(windows, flags, trie.codes, vocab)
    cpu_loss = sft_loss(model, vocab, tokens, targets, levels)
    gm = copy.deepcopy(model).cuda().train()
    loss = sft_loss(gm, vocab, tokens.cuda(), targets.cuda(), levels.cuda())
    torch.testing.assert_close(loss.cpu(), cpu_loss.detach(), rtol=1e-4, atol=1e-5)
    loss.backward()
    assert all(p.grad is None or p.grad.is_cuda for p in gm.parameters())
    with autocast("cuda", "bf16"):
        bf16 = sft_loss(gm, vocab, tokens.cuda(), targets.cuda(), levels.cuda())
    assert bf16.dtype == torch.float32 and abs(bf16.item() - cpu_loss.item()) < 0.05


@needs_cuda
@pytest.mark.parametrize("preset", ["beam", "vstar"])
@pytest.mark.parametrize("mode", ["none", "bf16"])
def test_an_rl_step_runs_on_cuda(preset, mode):
    vocab, trie, model, rows = toy_rl_world()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = RLTrainer(model.cuda(), vocab, trie.to("cuda"), rows,
                        RLConfig(steps=2, users_per_step=8, n_candidates=4, **RL_PRESETS[preset]),
                        max_history=5, autocast=mode)
    assert trainer.gen.device.type == "cuda" and module_device(trainer.value_head).type == "cuda"
    records = [trainer.step() for _ in range(2)]
    assert all(np.isfinite(r["reward_mean"]) for r in records)
    assert any(not torch.equal(a, b.cpu()) for a, b in zip(before, model.parameters()))


@needs_cuda
def test_the_toy_pipeline_runs_on_cuda(tmp_path):
    from vstar.experiments.config import load_config
    from vstar.experiments.pipeline import run_pipeline

    write_toy_experiment(tmp_path, methods=("sasrec", "sft", "grpo_beam", "vstar"))
    cfg = load_config(tmp_path / "cfg.yaml", ["run.device=cuda", "run.autocast=bf16"])
    runs = run_pipeline(cfg)
    from vstar.core.layout import RunLayout

    assert len(runs) == 4 and all(RunLayout.of(r).metrics("test").is_file() for r in runs)
