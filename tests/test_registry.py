import subprocess
import sys

import pytest

from sage_libs.sage_finetune import (
    DatasetLoader,
    FineTuner,
    FineTuneRegistryError,
    create_loader,
    create_trainer,
    register_loader,
    register_trainer,
    registered_loaders,
    registered_trainers,
    unregister_loader,
    unregister_trainer,
)


def test_builtin_names():
    assert "lora" in registered_trainers()
    assert {"jsonl", "instruction"} <= set(registered_loaders())


def test_unknown_trainer_lists_registered():
    with pytest.raises(FineTuneRegistryError) as err:
        create_trainer("lorra")
    msg = str(err.value)
    assert "unknown trainer 'lorra'" in msg and "did you mean 'lora'?" in msg
    assert "registered trainers: " in msg and "lora" in msg.split("registered trainers: ")[1]


def test_unknown_loader_lists_registered():
    with pytest.raises(FineTuneRegistryError, match=r"registered loaders: .*jsonl"):
        create_loader("csv")


class _Echo(FineTuner):
    def __init__(self, **kw):
        self.kw = kw

    def train(self, train_dataset, eval_dataset=None, config=None):
        return {"n": len(train_dataset)}

    def evaluate(self, eval_dataset):
        return {}

    def save_model(self, output_dir):
        pass

    def load_model(self, model_path):
        pass

    def generate(self, prompt, **kw):
        return prompt


def test_register_create_unregister():
    register_trainer("echo-test", _Echo)
    try:
        trainer = create_trainer("echo-test", alpha=1)
        assert isinstance(trainer, _Echo) and trainer.kw == {"alpha": 1}
        assert trainer.train([1, 2]) == {"n": 2}
        with pytest.raises(FineTuneRegistryError, match="already registered"):
            register_trainer("echo-test", type("Other", (_Echo,), {}))
        register_trainer("echo-test", _Echo)  # the same class again is a no-op
    finally:
        unregister_trainer("echo-test")
    assert "echo-test" not in registered_trainers()


def test_register_rejects_non_subclass():
    with pytest.raises(TypeError, match="expected a subclass of FineTuner"):
        register_trainer("bad", dict)
    with pytest.raises(TypeError, match="expected a subclass of DatasetLoader"):
        register_loader("bad", _Echo)


def test_register_custom_loader():
    class Mem(DatasetLoader):
        def load(self, data_path, **kw):
            return [{"text": data_path}]

        def preprocess(self, dataset, tokenizer, **kw):
            return dataset

        def stream(self, data_path, **kw):
            yield from self.load(data_path)

    register_loader("mem-test", Mem)
    try:
        assert create_loader("mem-test").load("x") == [{"text": "x"}]
    finally:
        unregister_loader("mem-test")


def test_import_is_lazy():
    code = ("import sys, sage_libs.sage_finetune as f; "
            "f.TrainingConfig; f.create_trainer; f.registered_trainers(); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lazy_attribute_resolves():
    import sage_libs.sage_finetune as f

    assert f.LoRATrainer.method == "lora"
    with pytest.raises(AttributeError):
        f.NoSuchThing  # noqa: B018
