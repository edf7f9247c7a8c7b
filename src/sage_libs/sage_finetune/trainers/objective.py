"""An objective over a fine-tuning method: agent SFT and preference optimization change what is
trained on and how it is scored, while the method underneath (lora, qlora, full, ...) decides how
the model is loaded and which parameters train. The objective's trainer keeps that method's trainer
as ``inner`` and hands it everything it does not change itself."""

from __future__ import annotations

from typing import Any

from ..interface import FineTuner

__all__ = ["ObjectiveTrainer"]


class ObjectiveTrainer(FineTuner):
    """Delegates the :class:`FineTuner` API and any other attribute (``model``, ``tokenizer``,
    ``training_config``...) to ``self.inner``; subclasses set ``inner`` and override what differs."""

    inner: Any
    #: the objective's own config section (``agent``, ``preference``); see ``BaseTrainer.extra_section``
    extra_section: str | None = None

    @classmethod
    def section_option(cls) -> str | None:
        return f"{cls.extra_section}_config" if cls.extra_section else None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. while __init__ fails): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def train(self, train_dataset: Any = None, eval_dataset: Any = None, config: Any = None) -> dict[str, Any]:
        return self.inner.train(train_dataset, eval_dataset, config)

    def evaluate(self, eval_dataset: Any) -> dict[str, Any]:
        return self.inner.evaluate(eval_dataset)

    def save_model(self, output_dir: str) -> Any:
        return self.inner.save_model(output_dir)

    def merge_and_save(self, output_dir: str) -> Any:
        return self.inner.merge_and_save(output_dir)

    def load_model(self, model_path: str) -> None:
        self.inner.load_model(model_path)

    def generate(self, prompt: Any, **kwargs: Any) -> str:
        return self.inner.generate(prompt, **kwargs)
