"""The method registry: every method a comparison table can hold is one entry here.

    from vstar.experiments.registry import Method, register
    from vstar.experiments.methods import run_rl

    register(Method("grpo_sample", run_rl, kind="rl",
                    preset={"decoder": "sample", "sibling": False, "value_loss": False},
                    help="GRPO on sampled groups"))

After that one call, ``grpo_sample`` is accepted by ``run.methods``, offered by ``vstar rl
--method``, run by ``vstar run``, and grouped by ``vstar compare`` like any built-in method.

A method's ``runner(ctx) -> dict`` trains (or fits) and evaluates one seed in its run folder
(``ctx`` is a ``vstar.experiments.pipeline.MethodContext``). ``kind`` says which sub-command
offers it: "baseline" (``vstar baseline``), "sft" (``vstar sft``) or "rl" (``vstar rl``). An RL
recipe's ``preset`` overrides fields of the config's ``rl`` section. The built-in methods are
registered in ``vstar.experiments.methods``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from vstar.core.errors import InputError

KINDS = ("baseline", "sft", "rl")


@dataclass(frozen=True)
class Method:
    name: str
    runner: Callable[[Any], dict]
    kind: str
    preset: Mapping[str, Any] = field(default_factory=dict)
    help: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise InputError(f"a method name is letters, digits, '_' or '-', got {self.name!r}",
                             field="name")
        if self.kind not in KINDS:
            raise InputError(f"unknown method kind {self.kind!r}, expected one of {KINDS}",
                             field="kind")


_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method``; a second method with the same name is an error unless ``replace``."""
    if method.name in _REGISTRY and not replace:
        raise InputError(f"method {method.name!r} is already registered (pass replace=True)",
                         field="name")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}, expected one of {method_names()}",
                         field="run.methods")
    return _REGISTRY[name]


def method_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered method names (of one ``kind`` if given), in registration order."""
    return tuple(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)
