"""One training run, start to end, and everything it does to the output folder and the process.

    recipe.py       the run in order: inputs checked -> lock -> identity -> resume -> data -> model ->
                    output folder -> fast paths and the HF Trainer -> loop -> metrics -> final save
    lock.py         one live run per output folder
    identity.py     the run's fingerprint (which config and data wrote a folder or checkpoint)
    resume.py       which checkpoint to resume, checked before anything is loaded
    checkpoints.py  which checkpoint-N folders are complete; an earlier run's files moved aside
    signals.py      Ctrl-C and SIGTERM: a checkpoint, then a resume command
    disk.py         a full disk: one line, what was kept, how to resume
    metrics.py      the loop's metrics and the final evaluation
    files.py        every file name a run writes and how it is written (atomically)
"""

from __future__ import annotations

__all__: list[str] = []  # the modules are the API: run.recipe.run_training, run.files, ...
