"""Declarative config rules: every field of every typed config has one, and each rule says what
it expects."""

import dataclasses

import pytest

from vstar.core.errors import InputError
from vstar.core.validate import (at_least, between, check_fields, count, fraction, list_of,
                                 one_of, optional, positive, require, unruled_fields)
from vstar.experiments.config import PipelineConfig


def _configs():
    out = []
    for f in dataclasses.fields(PipelineConfig):
        cfg = f.default_factory()
        out.append((f.name, cfg))
        for sub in dataclasses.fields(cfg):                 # nested sections (rl.ved, ...)
            value = getattr(cfg, sub.name)
            if dataclasses.is_dataclass(value):
                out.append((f"{f.name}.{sub.name}", value))
    return out


@pytest.mark.parametrize("prefix,cfg", _configs(), ids=[p for p, _ in _configs()])
def test_every_config_field_has_a_rule_and_the_defaults_pass(prefix, cfg):
    rules = getattr(type(cfg), "RULES", {})
    missing = unruled_fields(type(cfg), rules)
    assert not missing, f"add rules for {prefix}.{missing} to {type(cfg).__name__}.RULES"
    assert set(rules) <= {f.name for f in dataclasses.fields(cfg)}
    if prefix == "data":
        cfg = dataclasses.replace(cfg, path="data.csv")   # the one field without a default
    cfg.validate(prefix)


@pytest.mark.parametrize("rule,good,bad", [
    (positive, [1e-9, 3], [0, -1, float("nan"), float("inf"), "1", True]),
    (count, [1, 7], [0, -2, 1.5, True, None]),
    (fraction, [0.0, 0.99], [1.0, -0.1, float("nan")]),
    (between(0, 1), [0, 1], [1.01]),
    (at_least(0, integer=False), [0, 2.5], [-1e-9]),
    (one_of("a", "b"), ["a"], ["c", None]),
    (optional(count), [None, 3], [0]),
    (list_of(count, nonempty=True, unique=True), [[1, 2]], [[], [1, 1], [0], "12", 3]),
    (list_of(positive, length=3), [[1, 2, 3]], [[1, 2]]),
])
def test_rules_accept_and_reject(rule, good, bad):
    assert all(rule(v) for v in good)
    assert not any(rule(v) for v in bad)


def test_errors_name_the_field_the_value_and_the_expectation():
    @dataclasses.dataclass
    class C:
        lr: float = -1.0

    with pytest.raises(InputError, match=r"^field 'x.lr': got -1.0, expected a number > 0$"):
        check_fields(C(), "x", {"lr": positive})
    with pytest.raises(InputError, match=r"field 'x.n_head': got 3, expected a divisor"):
        require(False, "x.n_head", 3, "a divisor of 8")


def test_item_head_fusion_needs_the_item_loss_that_trains_the_head():
    from vstar.experiments.config import load_config
    with pytest.raises(InputError, match=r"field 'eval.item_head': got 1.0, expected 0 unless "
                                         r"sft.item_loss > 0"):
        load_config(None, ["data.path=x.csv", "eval.item_head=1.0"])
    cfg = load_config(None, ["data.path=x.csv", "eval.item_head=1.0", "sft.item_loss=1.0"])
    assert cfg.eval.item_head == 1.0


def test_item_distillation_needs_the_item_loss_whose_head_it_distils_into():
    from vstar.experiments.config import load_config
    with pytest.raises(InputError, match=r"field 'sft.item_distill': got 0.5, expected 0 unless "
                                         r"sft.item_loss > 0"):
        load_config(None, ["data.path=x.csv", "sft.item_distill=0.5"])
    with pytest.raises(InputError, match=r"field 'sft.item_distill': got 1.5"):
        load_config(None, ["data.path=x.csv", "sft.item_distill=1.5", "sft.item_loss=1.0"])
    cfg = load_config(None, ["data.path=x.csv", "sft.item_distill=0.5", "sft.item_loss=1.0",
                             "sft.item_teacher_hidden=32"])
    assert cfg.sft.item_distill == 0.5 and cfg.sft.item_teacher_hidden == 32
