"""Logging that works the same on a laptop without network and on a cluster: every config logs to
W&B and to a local CSV file (`CSVLogger`: `<run dir>/metrics.csv`, what `python -m arjepa_pl summary`
reads), so the loss can be read without W&B.

`WandbLogger` is Lightning's, plus three things a training run needs:

- **offline by itself**: with no API key (`wandb login` / WANDB_API_KEY) the run is logged offline
  without touching the network; with a key, one bounded request (`connect_timeout`) decides. Either
  way a one-line message says where the run is saved and how to `wandb sync` it.
- **one W&B run per run directory**: the run id is pinned in `<save_dir>/wandb_run_id`, so a
  resumed or requeued job continues the same W&B run instead of starting a new one (Lightning #13524).
- **a finished run at the end of each fit**, so the next fit in the same process starts its own.

Lightning's WandbLogger already logs from rank 0 only (the other ranks get a dummy experiment).
Offline, W&B's own console lines (its mode, its sync hint, its end-of-run history) are silenced:
our one line says the same, and the end-of-fit summary (arjepa_pl.summary) shows the numbers.
"""

from __future__ import annotations

import csv
import netrc
import os
import secrets
import string
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

DEFAULT_BASE_URL = "https://api.wandb.ai"
RUN_ID_FILE = "wandb_run_id"
METRICS_FILE = "metrics.csv"


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_api_key(url: str) -> bool:
    """An API key in WANDB_API_KEY or in the netrc file (where `wandb login` writes it) for `url`'s host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(urlsplit(url).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def reachable(url: str, timeout: float) -> bool:
    """Whether `url` answers an HTTP request within `timeout` seconds (any HTTP status counts).

    The request runs in a daemon thread joined with the timeout, so a hanging DNS lookup (which
    socket timeouts do not cover) cannot hold the caller longer than `timeout`.
    """
    answered = threading.Event()

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            answered.set()
        except urllib.error.HTTPError:  # the server answered, with an error status: still online
            answered.set()
        except Exception:  # noqa: BLE001 - DNS, refused, TLS, timeout: all mean "not reachable"
            pass

    thread = threading.Thread(target=probe, name="wandb-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    return answered.is_set()


def choose_mode(offline: Optional[bool], connect_timeout: float) -> tuple[str, Optional[str]]:
    """("online" | "offline" | a WANDB_MODE value, why offline or None).

    An explicit `offline` wins, then WANDB_MODE, then: no key -> offline with no network call at all;
    a key -> online only if the server answers within `connect_timeout` seconds.
    """
    if offline is not None:
        return ("offline", "offline: true in the logger config") if offline else ("online", None)
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        mode = "offline" if env == "dryrun" else env
        return mode, (f"WANDB_MODE={env}" if mode == "offline" else None)
    url = base_url()
    if not has_api_key(url):
        return "offline", "no API key; `wandb login` or WANDB_API_KEY gives one"
    if not reachable(url, connect_timeout):
        return "offline", f"{url} did not answer within {connect_timeout:g} s"
    return "online", None


def pinned_run_id(run_dir: str | os.PathLike, run_id: Optional[str] = None) -> str:
    """The W&B run id of `run_dir`: `run_id` if given, else the pinned one, else a new one; pinned either way."""
    path = Path(run_dir) / RUN_ID_FILE
    if run_id is None and path.is_file():
        run_id = path.read_text().strip() or None
    run_id = run_id or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, offline when W&B cannot be reached, one W&B run per run directory.

    Args:
        project: W&B project.
        entity: W&B user or team (None: the key's default entity).
        name: display name of the run (None: W&B picks one).
        group: runs to show together, e.g. the seeds of one comparison.
        tags: labels to filter runs by.
        notes: free text shown with the run.
        job_type: e.g. "pretrain" or "probe".
        save_dir: the run directory; W&B's files go to `<save_dir>/wandb`, the run id to
            `<save_dir>/wandb_run_id`.
        id: the W&B run id (None: the pinned one, else a new one).
        offline: True / False force the mode; None decides (no key or no answer: offline).
        connect_timeout: seconds to wait for the W&B server when a key is present.
        log_model: upload checkpoints as artifacts (online only).
    """

    def __init__(
        self,
        project: str = "arjepa_pl",
        entity: Optional[str] = None,
        name: Optional[str] = None,
        group: Optional[str] = None,
        tags: Optional[list[str]] = None,
        notes: Optional[str] = None,
        job_type: Optional[str] = None,
        save_dir: str = ".",
        id: Optional[str] = None,
        offline: Optional[bool] = None,
        connect_timeout: float = 5.0,
        log_model: bool = False,
    ):
        if offline and log_model:
            raise ValueError("log_model=True needs an online W&B run: set offline to null or false")
        super().__init__(name=name, save_dir=save_dir, id=id, project=project, log_model=log_model,
                         entity=entity, group=group, tags=tags, notes=notes, job_type=job_type)
        self._wandb_init.pop("anonymous")  # Lightning passes None, which recent wandb warns about
        self.offline, self.connect_timeout = offline, connect_timeout
        self.mode: Optional[str] = None  # decided when the run starts, on rank 0

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            save_dir = self.save_dir
            assert save_dir is not None  # __init__ always passes one (default ".")
            self.mode, why = choose_mode(self.offline, self.connect_timeout)
            self._id = pinned_run_id(save_dir, self._wandb_init.get("id"))
            self._wandb_init.update(id=self._id, mode=self.mode)
            self._wandb_init.pop("settings", None)
            if self.mode == "offline":
                self._log_model = False  # nothing to upload to
                where = os.path.join(save_dir, "wandb")
                rank_zero_info(f"W&B offline ({why}); upload the run later with "
                               f"`wandb sync {where}/offline-run-*-{self._id}`")
                # wandb would repeat the mode in three lines of its own and print its run history at
                # the end; the line above says where the run is, the end-of-fit summary the numbers.
                self._wandb_init["settings"] = {"silent": True}
        return super().experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=1 if status == "failed" else 0)
            self._experiment = None  # a later fit/test in this process starts (or resumes) the run again


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv is continued, not deleted: a
    resumed run appends to its run directory's file (a step logged twice keeps both rows; readers
    take the last). Every row gets `time`, the Unix time it was logged."""

    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _check_log_dir_exists(self) -> None:
        pass  # the run directory holds checkpoints and media too: not a reason to warn or delete

    def log_metrics(self, metrics_dict: dict, step: Optional[int] = None) -> None:
        super().log_metrics({**metrics_dict, "time": round(time.time(), 3)}, step)


class CSVLogger(_LightningCSVLogger):
    """Metrics as CSV in `<save_dir>/metrics.csv`, one row per logging step, written as they come
    (every `flush_logs_every_n_steps` logging calls), continued by resumed runs.

    `python -m arjepa_pl summary RUN_DIR` reads it (key numbers and a picture of the curves). The
    hyperparameters are not written: config.yaml beside it holds the whole resolved config.

    Args:
        save_dir: the run directory.
        flush_logs_every_n_steps: write to disk every this many logging calls.
    """

    def __init__(self, save_dir: str = ".", flush_logs_every_n_steps: int = 1):
        super().__init__(save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if not isinstance(self._experiment, _AppendingWriter):
            self._fs.makedirs(self.save_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.save_dir)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params=None) -> None:
        pass
