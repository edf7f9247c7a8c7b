"""What the command line prints to the console, and what it leaves to OUTPUT_DIR/train.log."""

from __future__ import annotations

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    import logging

    # The console shows warnings and errors; progress and evaluations come from ConsoleCallback and
    # the summary from the command. INFO lines go to OUTPUT_DIR/train.log (see BaseTrainer.train).
    # Known noise is dropped by its exact text (utils/noise.py); no warning category is silenced.
    # Other libraries' lines go to train.log only (utils/noise.CONSOLE_LOGGERS says which reach the console).
    from ..utils.noise import ConsoleLoggers, EarlyRecords

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # a run lowers our logger to INFO for train.log (run/files.py)
        if handler.level == logging.NOTSET:
            handler.setLevel(logging.WARNING)
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, ConsoleLoggers) for f in handler.filters):
            handler.addFilter(ConsoleLoggers())
    EarlyRecords.install()  # until a run opens train.log (run_files.log_to_file)
    # Python warnings become log records: train.log gets them all, the console those of the
    # libraries above and of the user's code (ConsoleLoggers)
    logging.captureWarnings(True)
    for noisy in ("httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
