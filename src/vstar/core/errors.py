"""One error type for bad user input, always naming where the problem is."""

from __future__ import annotations


class InputError(ValueError):
    """Malformed user input. The message names the file, line or field and what was expected."""

    def __init__(self, what: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        self.file, self.line, self.field = file, line, field
        super().__init__(f"{', '.join(where)}: {what}" if where else what)


class NonFiniteError(InputError):
    """NaN or Inf in a training quantity (loss, reward, advantage) or a metric."""


def check_finite(value, what: str, step: int | None = None) -> None:
    """NonFiniteError naming ``what`` (and the step) if a tensor, array or number has a NaN/Inf.

    The usual cause is a learning rate too high or a reward that divides by zero."""
    import math

    if hasattr(value, "isfinite"):                       # torch tensor
        ok = bool(value.detach().isfinite().all())
    elif hasattr(value, "dtype"):                        # numpy array
        import numpy as np
        ok = bool(np.isfinite(value).all())
    else:
        ok = math.isfinite(float(value))
    if not ok:
        at = f" at step {step}" if step is not None else ""
        raise NonFiniteError(f"non-finite values (NaN or Inf) in {what}{at}; the run stops here "
                             "(a learning rate too high?)", field=what)
