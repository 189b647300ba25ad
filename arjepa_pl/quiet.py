"""Messages of our dependencies that say nothing a user of arjepa_pl can act on, silenced here, each
with the reason. `install()` runs when the package is imported, so every entry point (CLI, scripts)
is quiet; tests/conftest.py runs it again at pytest's start, since pytest restores the warning filters
it found after collecting (which is when the package is first imported).

Everything else (our warnings, Lightning's advice about a configuration, data-loading skips) is kept.
Only standard-library imports: importing the package stays light.
"""

import logging
import warnings


class _DropMessages(logging.Filter):
    """Drops the log records whose message contains one of `fragments`."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


_LIGHTNING_INFO = _DropMessages(
    # An advertisement for Lightning's cloud logger, printed whenever a Trainer is built without it.
    "try installing [litlogger]",
    # The normal end of a run: the progress line stops at the budget it reached and the end-of-fit
    # summary says `step N / N` (other reasons to stop, such as no training batches, are kept).
    "`Trainer.fit` stopped: `max_steps=", "`Trainer.fit` stopped: `max_epochs=",
)


def install() -> None:
    """Add the filters (again: adding one twice keeps one)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_LIGHTNING_INFO)
    # Lightning (<= 2.6) builds torch's LeafSpec, which torch 2.10+ deprecates, whenever it combines
    # data loaders: Lightning's code, fixed by a Lightning upgrade, not by anything in a configuration.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # ArJepaCLI(args=[...]) is how Python code (tests, benchmarks) runs the CLI: the process's own
    # sys.argv belongs to that program (pytest's options), not to the run, and is ignored by design;
    # Lightning warns about the pair in case a script passed both by mistake.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python",
                            category=UserWarning)


install()
