"""Callbacks: user hooks (:class:`TrainingCallback`) bridged onto the HF Trainer, and the run
logger that writes ``trainer_log.jsonl``."""
