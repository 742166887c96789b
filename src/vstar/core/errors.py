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
