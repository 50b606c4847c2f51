"""The run's console shows mm-mo's own lines only; everything else goes to the run's log file.

:class:`RunConsole` is entered before the first input check (before lm-eval, datasets,
transformers or Prefect are imported), so that their warnings, INFO logs, progress bars and
prints (``metric acc is defined, but aggregation is not`` for a task YAML that omits it) land
in the log file, never between mm-mo's lines:

- every log record (root logger at INFO, ``warnings.warn`` included) is written to the log;
- unless ``verbose``, the process's stdout and stderr (Python's ``sys.stdout``/``sys.stderr``
  and, when they are the real file descriptors 1 and 2, the descriptors themselves: C-level
  output and child processes too) are redirected to the log for the run; mm-mo's two rich
  consoles keep writing to the original streams;
- third-party progress bars are turned off (tqdm reads ``TQDM_DISABLE`` once, at import).

Everything is restored on exit (the CLI runs in-process in tests).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from pathlib import Path
from typing import IO, Any

from rich.console import Console

__all__ = ["RunConsole"]

_QUIET_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL"}

#: Libraries that attach their own console handler; their records go to the log instead.
_CHATTY = ("lm_eval", "lm-eval", "datasets", "transformers", "huggingface_hub", "accelerate",
           "mergekit", "prefect", "torch", "botorch", "gpytorch", "py.warnings", "urllib3",
           "httpx", "fsspec", "s3fs", "botocore", "aiobotocore", "distributed", "ray", "mmmo")


class RunConsole:
    """Route library output to ``log`` for the duration of a run (see the module docstring).

    Args:
        log: The run's log file (created, appended to).
        consoles: mm-mo's own consoles (``out`` on stdout, ``err`` on stderr): they keep
            writing to the terminal.
        verbose: Keep library output on the console (logs are still written to ``log``).
    """

    def __init__(self, log: Path, consoles: tuple[Console, Console], *, verbose: bool) -> None:
        self.log, self.verbose = log, verbose
        self.out_console, self.err_console = consoles
        self._undo: list[Any] = []

    def __enter__(self) -> RunConsole:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._stream = self.log.open("a", buffering=1, encoding="utf-8", errors="replace")
        self._undo.append(self._stream.close)
        if not self.verbose:
            for key, value in _QUIET_ENV.items():
                if key not in os.environ:
                    os.environ[key] = value
                    self._undo.append(lambda k=key: os.environ.pop(k, None))
            self._redirect()
        self._logging()
        return self

    # ------------------------------------------------------------------ streams

    def _redirect(self) -> None:
        for fd, name, console in ((1, "stdout", self.out_console),
                                  (2, "stderr", self.err_console)):
            current: IO[str] = getattr(sys, name)
            mine = self._own_stream(current, fd)
            old_file = console._file  # noqa: SLF001 - None means "sys.<name> at write time"
            console.file = mine
            self._undo.append(lambda c=console, f=old_file: setattr(c, "_file", f))
            setattr(sys, name, self._stream)
            self._undo.append(lambda n=name, s=current: setattr(sys, n, s))

    def _own_stream(self, current: IO[str], fd: int) -> IO[str]:
        """Where mm-mo's console writes: ``current``, or a duplicate of descriptor ``fd`` when
        ``current`` is that descriptor (which is then pointed at the log)."""
        try:
            is_fd = current.fileno() == fd
        except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
            is_fd = False
        if not is_fd:
            return current
        current.flush()
        saved = os.dup(fd)
        os.dup2(self._stream.fileno(), fd)

        def restore() -> None:
            with contextlib.suppress(OSError, ValueError):
                current.flush()
            os.dup2(saved, fd)

        self._undo.append(restore)
        mine = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(
            current, "encoding", None) or "utf-8", errors="replace")
        self._undo.append(lambda: os.close(saved))
        self._undo.append(mine.close)
        return mine

    # ------------------------------------------------------------------ logging

    def _logging(self) -> None:
        self._handler = logging.StreamHandler(self._stream)
        self._handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s"))
        self._handler.setLevel(logging.INFO)
        root = logging.getLogger()
        old = root.level
        self._undo.append(lambda: root.setLevel(old))
        self._undo.append(lambda: root.removeHandler(self._handler))
        self.attach()
        for noisy in ("httpx", "httpcore", "urllib3", "botocore", "aiobotocore", "s3fs",
                      "fsspec", "filelock", "asyncio", "aiosqlite", "matplotlib", "PIL"):
            logger = logging.getLogger(noisy)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
                self._undo.append(lambda lg=logger: lg.setLevel(logging.NOTSET))
        logging.captureWarnings(True)
        self._undo.append(lambda: logging.captureWarnings(False))
        self.route()

    def attach(self) -> None:
        """(Re)attach the log handler to the root logger at INFO: Prefect's logging set-up
        replaces the root's handlers, so call this again after it."""
        root = logging.getLogger()
        if self._handler not in root.handlers:
            root.addHandler(self._handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def route(self) -> None:
        """Send the console handlers libraries attached (at their import) to the log.

        Called on entry and again once the input checks have imported lm-eval, datasets and
        transformers; a library imported later writes to the redirected streams anyway.
        """
        if self.verbose:
            return
        for name in _CHATTY:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(
                        handler, logging.FileHandler) and getattr(handler, "stream", None) \
                        is not self._stream:
                    logger.removeHandler(handler)
                    self._undo.append(lambda lg=logger, h=handler: lg.addHandler(h))
            if not logger.propagate:
                logger.propagate = True
                self._undo.append(lambda lg=logger: setattr(lg, "propagate", False))

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            with contextlib.suppress(Exception):
                undo()
        self._undo.clear()
        with contextlib.suppress(OSError):  # a run that logged nothing leaves no log behind
            if self.log.stat().st_size == 0:
                self.log.unlink()
