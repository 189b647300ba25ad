"""What a user sees when a run cannot start or stops early: a few lines and an exit status that tells the truth.

- A user's mistake (a configuration value, a mistyped key, a YAML syntax error, a missing manifest or
  checkpoint, a busy or unwritable run directory) is found before anything is written or started, and
  reported as the full key, the value given and what is allowed, with exit status 2 (argparse's).
- A run that started and then stopped for a reason we can name (a non-finite loss, a checkpoint that
  could not be written) says so in one line and exits with status 1.
- A signal ends a run with 128 + its number (130 for Ctrl-C, 143 for SIGTERM), after saving (arjepa_pl.signals).
- Anything else is a bug, ours or a library's: it shows its full traceback.

ARJEPA_DEBUG=1 shows the traceback in every case. Only `main()` turns these exceptions into exit
statuses, so code calling the CLI from Python (tests, notebooks) still gets the exceptions.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

EXIT_RUN_FAILED = 1
EXIT_USER_ERROR = 2
DEBUG_ENV = "ARJEPA_DEBUG"
_UNSET: Any = object()


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class UserError(Exception):
    """Something the user can fix (configuration, inputs, paths): a short message, exit status 2."""

    exit_status = EXIT_USER_ERROR


class ConfigError(UserError, ValueError):
    """A configuration value that is not allowed.

    `key` is the full dotted key (model.init_args.encoder.init_args.embed_dim), or a key relative to
    the object that raised it (`within` adds the prefix); `value` is what was given (left out when
    unknown); `why` says what is wrong and what is allowed; `hint` is an optional second line, such
    as a "did you mean".
    """

    def __init__(self, key: str, value: Any = _UNSET, why: str = "", hint: Optional[str] = None):
        self.key, self.value, self.why, self.hint = key, value, why, hint
        super().__init__(self.message())

    @property
    def has_value(self) -> bool:
        return self.value is not _UNSET

    def message(self) -> str:
        head = f"{self.key} = {format_value(self.value)}" if self.has_value else self.key
        lines = [head, *(f"  {line}" for line in (self.why, self.hint) if line)]
        return "\n".join(lines)

    def within(self, prefix: str) -> ConfigError:
        """The same error with `prefix.` before its key."""
        return ConfigError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.why, self.hint)


class ConfigErrors(UserError):
    """Several configuration errors found together (the pre-flight checks report all of them at once)."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        super().__init__("\n".join(e.message() for e in errors))


class RunFailed(Exception):
    """A run that started and stopped for a reason we can name: a one-line message, exit status 1."""

    exit_status = EXIT_RUN_FAILED


def format_value(value: Any) -> str:
    """A value as the user would write it: strings quoted, the rest as Python prints it, long ones cut."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 200 else text[:197] + "..."


def raise_all(errors: list[ConfigError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


HINT = "`python -m arjepa_pl {command}--help` lists every key; {env}=1 shows the traceback"


@contextmanager
def reported(command: Optional[str] = "fit") -> Iterator[None]:
    """Around the whole command: user errors and named run failures become a short message on stderr
    and their exit status; everything else propagates (a traceback). ARJEPA_DEBUG=1 lets all through."""
    try:
        yield
    except (UserError, RunFailed) as e:
        if debugging():
            raise
        sys.stderr.flush()
        lines = str(e).splitlines() or [type(e).__name__]
        print(f"error: {lines[0]}", *lines[1:], sep="\n", file=sys.stderr)
        if isinstance(e, UserError):
            print(f"({HINT.format(command=f'{command} ' if command else '', env=DEBUG_ENV)})", file=sys.stderr)
        sys.exit(e.exit_status)
