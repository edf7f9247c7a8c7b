"""Callbacks: hook order and arguments, stopping, early stopping, TensorBoard and W&B files."""

import json
from pathlib import Path

import pytest

from sage_libs.sage_finetune import LoRAConfig, TrainingCallback, TrainingConfig, create_trainer

from ..paths import EXAMPLE_DATA  # noqa: E402


def make(tiny_model_dir, tmp_path, callbacks, **training):
    cfg = dict(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "out"), max_steps=4,
               per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1,
               eval_steps=2, save_steps=2, disable_tqdm=True)
    cfg.update(training)
    return create_trainer("lora", training_config=TrainingConfig(**cfg),
                          lora_config=LoRAConfig(r=4, lora_dropout=0.0), callbacks=callbacks)


def data():
    from sage_libs.sage_finetune import create_loader

    loader = create_loader("jsonl")
    return (loader.load(EXAMPLE_DATA / "alpaca_train.jsonl", max_samples=16),
            loader.load(EXAMPLE_DATA / "alpaca_eval.jsonl", max_samples=4))


class Recorder(TrainingCallback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer, **kw):
        self.calls.append(("train_begin", trainer.model is not None))

    def on_epoch_begin(self, trainer, epoch, **kw):
        self.calls.append(("epoch_begin", epoch))

    def on_step_begin(self, trainer, step, **kw):
        self.calls.append(("step_begin", step))

    def on_step_end(self, trainer, step, loss=None, **kw):
        self.calls.append(("step_end", step, isinstance(loss, float) and loss > 0))

    def on_evaluate(self, trainer, metrics, **kw):
        self.calls.append(("evaluate", "eval_loss" in metrics))

    def on_save(self, trainer, output_dir, **kw):
        self.calls.append(("save", Path(output_dir).name))

    def on_epoch_end(self, trainer, epoch, metrics=None, **kw):
        self.calls.append(("epoch_end", epoch))

    def on_train_end(self, trainer, **kw):
        self.calls.append(("train_end",))


def test_hook_order_and_arguments(tiny_model_dir, tmp_path):
    rec = Recorder()
    train, evald = data()
    make(tiny_model_dir, tmp_path, [rec]).train(train, evald)
    assert rec.calls == [
        ("train_begin", True), ("epoch_begin", 0),
        ("step_begin", 0), ("step_end", 1, True),
        ("step_begin", 1), ("step_end", 2, True), ("evaluate", True), ("save", "checkpoint-2"),
        ("step_begin", 2), ("step_end", 3, True),
        ("step_begin", 3), ("step_end", 4, True), ("evaluate", True), ("save", "checkpoint-4"),
        ("epoch_end", 0), ("train_end",),
    ]


def test_sage_style_callback_stops_training(tiny_model_dir, tmp_path):
    class StopAt(TrainingCallback):
        def on_step_end(self, trainer, step, loss=None, **kw):
            return step >= 2

    train, _ = data()
    metrics = make(tiny_model_dir, tmp_path, [StopAt()], max_steps=10, save_strategy="no").train(train)
    assert metrics["global_step"] == 2


def test_early_stop_on_crafted_sequence():
    from sage_libs.sage_finetune.callbacks import EarlyStopCallback

    def stop_eval(values, **kw):
        """The 1-based evaluation at which the callback asks to stop (None: never)."""
        cb = EarlyStopCallback(**kw)
        for i, value in enumerate(values, start=1):
            if cb.on_evaluate(None, {"eval_loss": value}):
                assert cb.stopped_at_eval == i
                return i
        return None

    # best 0.9 at eval 2; evals 3 and 4 do not beat it -> stop at eval 4
    assert stop_eval([1.0, 0.9, 0.95, 0.91, 0.5], patience=2) == 4
    # 0.89 beats 0.9 but not by more than min_delta=0.05 -> counts as no improvement
    assert stop_eval([1.0, 0.9, 0.89, 0.88, 0.5], patience=2, min_delta=0.05) == 4
    assert stop_eval([1.0, 0.9, 0.8, 0.7], patience=1) is None
    assert stop_eval([0.1, 0.2, 0.15, 0.3, 0.25, 0.2], patience=2, mode="max") == 6


def test_early_stop_in_training(tiny_model_dir, tmp_path, capsys):
    from sage_libs.sage_finetune.callbacks import EarlyStopCallback

    # min_delta larger than any loss change: the first eval sets the best, the next two fail
    cb = EarlyStopCallback(patience=2, min_delta=100.0)
    train, evald = data()
    metrics = make(tiny_model_dir, tmp_path, [cb], max_steps=20, eval_steps=1, save_strategy="no").train(train, evald)
    assert cb.stopped_step == 3 and metrics["global_step"] == 3
    # said on the console, and recorded with the run's metrics
    err = capsys.readouterr().err
    assert "Early stopping at step 3: eval_loss" in err and "best" in err and "(step 1)" in err
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for m in (metrics, saved):
        assert m["stopped_early"] is True
        stop = m["early_stop"]
        assert (stop["metric"], stop["step"], stop["best_step"], stop["evaluations"]) == ("eval_loss", 3, 1, 3)
        assert stop["best"] == pytest.approx(saved["early_stop"]["best"]) and stop["best"] > 0


def test_early_stop_not_triggered_is_recorded(tiny_model_dir, tmp_path, capsys):
    from sage_libs.sage_finetune.callbacks import EarlyStopCallback

    train, evald = data()
    metrics = make(tiny_model_dir, tmp_path, [EarlyStopCallback(patience=50)], eval_steps=2,
                   save_strategy="no").train(train, evald)
    assert metrics["global_step"] == 4 and metrics["stopped_early"] is False
    assert metrics["early_stop"]["step"] is None and metrics["early_stop"]["evaluations"] == 2
    assert "Early stopping" not in capsys.readouterr().err


def test_early_stop_unknown_metric(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune.callbacks import EarlyStopCallback

    train, evald = data()
    trainer = make(tiny_model_dir, tmp_path, [EarlyStopCallback(metric="eval_accuracy")], save_strategy="no")
    with pytest.raises(KeyError, match="metric 'eval_accuracy' is not among the evaluation metrics"):
        trainer.train(train, evald)


def test_tensorboard_events_readable(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback as HFTensorBoardCallback

    from sage_libs.sage_finetune import TrainingCallback
    from sage_libs.sage_finetune.callbacks import TensorBoardCallback

    cb = TensorBoardCallback(log_dir=tmp_path / "tb")
    # transformers' integration with our options, and still a TrainingCallback for the registry
    assert isinstance(cb, TensorBoardCallback) and isinstance(cb, HFTensorBoardCallback)
    assert isinstance(cb, TrainingCallback) and isinstance(cb, TrainerCallback)
    train, evald = data()
    make(tiny_model_dir, tmp_path, [cb], save_strategy="no", eval_on_start=True).train(train, evald)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/loss"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    # the evaluation before training is the point at step 0
    assert [e.step for e in acc.Scalars("eval/loss")] == [0, 2, 4]
    before = json.loads((tmp_path / "out" / "metrics.json").read_text())["eval_loss_before"]
    assert acc.Scalars("eval/loss")[0].value == pytest.approx(before, rel=1e-5)
    assert not (tmp_path / "out" / "runs").exists()  # everything went to log_dir


@pytest.mark.parametrize("how", ["callback", "report_to", "both"])
def test_tensorboard_default_dir_and_report_to_agree(tiny_model_dir, tmp_path, monkeypatch, how):
    """Without log_dir the events go to OUTPUT_DIR/runs, step-0 evaluation included, whether
    TensorBoard is a callback, in training.report_to (transformers' own integration would log the
    step-0 evaluation and everything after it to ./runs) or both (logged once)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sage_libs.sage_finetune.callbacks import TensorBoardCallback

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    train, evald = data()
    callbacks = [TensorBoardCallback()] if how != "report_to" else []
    report_to = ["tensorboard"] if how != "callback" else []
    make(tiny_model_dir, tmp_path, callbacks, save_strategy="no", eval_on_start=True, max_steps=2,
         report_to=report_to).train(train, evald)
    events = list((tmp_path / "out" / "runs").glob("events.out.tfevents.*"))
    assert len(events) == 1
    assert not (tmp_path / "runs").exists()
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/loss")] == [0, 2]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]


def test_report_to_tracker_not_installed(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    from sage_libs.sage_finetune import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    train, _ = data()
    with pytest.raises(ConfigError, match=r"training.report_to: wandb is not installed; "
                                          r"pip install wandb"):
        make(tiny_model_dir, tmp_path, [], report_to=["wandb"]).train(train)
    assert not (tmp_path / "out").exists()


def read_wandb_records(path):
    """The protobuf records of a .wandb file (a LevelDB-style log: 32 KiB blocks of
    crc32/length/type-framed chunks after a 7-byte ':W&B' header)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk ends a record
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def test_wandb_offline_run_directory(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from transformers.integrations import WandbCallback as HFWandbCallback

    from sage_libs.sage_finetune.callbacks import WandbCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train, evald = data()
    cb = WandbCallback(project="isage-test", run_name="lora-exp1", dir=str(tmp_path / "wb"))
    assert isinstance(cb, WandbCallback) and isinstance(cb, HFWandbCallback)
    metrics = make(tiny_model_dir, tmp_path, [cb], save_strategy="no", eval_on_start=True).train(train, evald)
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = read_wandb_records(next(runs[0].glob("run-*.wandb")))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name) == ("isage-test", "lora-exp1")

    def key(item):
        return item.key or "/".join(item.nested_key)

    history = [{key(i): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    losses = {h["train/global_step"]: h["train/loss"] for h in history if "train/loss" in h}
    evals = {h["train/global_step"]: h["eval/loss"] for h in history if "eval/loss" in h}
    assert sorted(losses) == [1, 2, 3, 4] and all(v > 0 for v in losses.values())
    # the evaluation before training is the point at step 0
    assert sorted(evals) == [0, 2, 4]
    assert evals[0] == pytest.approx(metrics["eval_loss_before"], rel=1e-5)
    assert evals[4] == pytest.approx(metrics["eval_loss"], rel=1e-5)
    summary, config = {}, {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({key(i): json.loads(i.value_json) for i in r.summary.update})
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):  # the config given to wandb.init, then HF's additions
            updates = r.run.config.update if kind == "run" else r.config.update
            config.update({key(i): json.loads(i.value_json) for i in updates})
    assert summary["train_loss"] == pytest.approx(metrics["train_loss"])
    assert config["isage_finetune"]["method"] == "lora" and config["isage_finetune"]["lora"]["r"] == 4
    assert cb.run is None  # finished


def test_wandb_run_finishes_after_the_final_evaluation(tiny_model_dir, tmp_path, monkeypatch):
    """The last step is not an evaluation step: the trainer evaluates once more after training, and
    that evaluation still reaches the run before it is finished."""
    pytest.importorskip("wandb")
    from sage_libs.sage_finetune.callbacks import WandbCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train, evald = data()
    cb = WandbCallback(project="isage-test", dir=str(tmp_path / "wb"))
    metrics = make(tiny_model_dir, tmp_path, [cb], save_strategy="no", max_steps=3).train(train, evald)
    assert cb.run is None
    run_dir = next((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    records = read_wandb_records(next(run_dir.glob("run-*.wandb")))
    evals = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            item = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            if "eval/loss" in item:
                evals[item["train/global_step"]] = item["eval/loss"]
    assert sorted(evals) == [2, 3] and evals[3] == pytest.approx(metrics["eval_loss"], rel=1e-5)


def test_callbacks_by_name():
    from sage_libs.sage_finetune import create_callback, registered_callbacks

    assert {"tensorboard", "wandb", "early_stop"} <= set(registered_callbacks())
    cb = create_callback("early_stop", patience=5, metric="eval_loss")
    assert cb.patience == 5


def _yaml_config(tmp_path, model_dir, callbacks):
    from ..helpers import write_config

    return write_config(tmp_path, model_dir, training={"max_steps": 6, "learning_rate": 1e-2, "eval_steps": 1},
                        lora={"r": 4, "target_modules": None},
                        data={"eval_file": str(EXAMPLE_DATA / "alpaca_eval.jsonl"), "max_samples": 16},
                        callbacks=callbacks)


def test_callbacks_from_yaml(tiny_model_dir, tmp_path):
    import yaml

    from sage_libs.sage_finetune.cli import main

    callbacks = [{"name": "early_stop", "patience": 2, "min_delta": 100.0},
                 {"name": "tensorboard", "log_dir": str(tmp_path / "tb")}]
    assert main(["train", str(_yaml_config(tmp_path, tiny_model_dir, callbacks))]) == 0
    out = tmp_path / "out"

    assert json.loads((out / "metrics.json").read_text())["global_step"] == 3  # early stop after 3 evals
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert yaml.safe_load((out / "run_config.yaml").read_text())["callbacks"] == callbacks


@pytest.mark.parametrize("callbacks, message", [
    (["earlystop"], "callbacks[0]: unknown callback 'earlystop' (did you mean 'early_stop'?)"),
    ([{"name": "early_stop", "patiance": 2}], "callbacks[0] (early_stop): unknown option 'patiance' "
                                              "(did you mean 'patience'?)"),
    ([{"name": "early_stop", "mode": "up"}], "callbacks[0] (early_stop): EarlyStopCallback.mode must be 'min' or 'max'"),
    ("early_stop", "'callbacks' must be a list"),
])
def test_bad_callbacks_in_yaml(tiny_model_dir, tmp_path, capsys, callbacks, message):
    from sage_libs.sage_finetune.cli import main

    assert main(["train", str(_yaml_config(tmp_path, tiny_model_dir, callbacks))]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
