"""The abstract interfaces a trainer, a loader and a callback implement.

They mirror SAGE's ``sage.libs.finetune`` interface (same method names and signatures), so a class
written against one works against the other. Standard library only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator

__all__ = ["FineTuner", "DatasetLoader", "TrainingCallback", "TrainingStrategy"]


class FineTuner(ABC):
    """A fine-tuning method: trains a model, evaluates, saves and generates."""

    @abstractmethod
    def train(self, train_dataset: Any, eval_dataset: Any = None, config: Any = None) -> dict[str, Any]:
        """Train and return metrics (train_loss, eval_loss, perplexity, runtime, tokens/s...)."""

    @abstractmethod
    def evaluate(self, eval_dataset: Any) -> dict[str, Any]:
        """Return eval_loss and perplexity on ``eval_dataset``."""

    @abstractmethod
    def save_model(self, output_dir: str) -> None:
        """Write the trained weights (an adapter for PEFT methods) to ``output_dir``."""

    @abstractmethod
    def load_model(self, model_path: str) -> None:
        """Load weights written by :meth:`save_model`."""

    @abstractmethod
    def generate(self, prompt: Any, **kwargs: Any) -> str:
        """Generate a reply to ``prompt`` (a string or a list of chat messages)."""


class DatasetLoader(ABC):
    """Reads records from a source and turns them into tokenized training examples."""

    @abstractmethod
    def load(self, data_path: str, **kwargs: Any) -> Any:
        """Read all records of ``data_path``."""

    @abstractmethod
    def preprocess(self, dataset: Any, tokenizer: Any, **kwargs: Any) -> Any:
        """Turn records into tokenized examples (input_ids and labels)."""

    @abstractmethod
    def stream(self, data_path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Yield records one at a time in constant memory."""


class TrainingCallback(ABC):  # noqa: B024 - every hook is optional by design
    """Hooks into a run. Override the ones you need; all default to doing nothing.

    ``trainer`` is the isage-finetune trainer (``trainer.model``, ``trainer.tokenizer``...).
    Returning True from a hook (typically :meth:`on_step_end` or :meth:`on_evaluate`) stops
    training after the current step. :meth:`on_log` is an addition to SAGE's interface: it
    receives every logged value (loss, learning_rate, grad_norm, eval metrics...).
    """

    def on_train_begin(self, trainer: Any, **kwargs: Any) -> None:
        pass

    def on_train_end(self, trainer: Any, **kwargs: Any) -> None:
        pass

    def on_epoch_begin(self, trainer: Any, epoch: int, **kwargs: Any) -> None:
        pass

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, Any] | None = None, **kwargs: Any) -> None:
        pass

    def on_step_begin(self, trainer: Any, step: int, **kwargs: Any) -> None:
        pass

    def on_step_end(self, trainer: Any, step: int, loss: float | None = None, **kwargs: Any) -> bool | None:
        return None

    def on_evaluate(self, trainer: Any, metrics: dict[str, Any], **kwargs: Any) -> None:
        pass

    def on_save(self, trainer: Any, output_dir: str, **kwargs: Any) -> None:
        pass

    def on_log(self, trainer: Any, logs: dict[str, Any], step: int, **kwargs: Any) -> None:
        pass


class TrainingStrategy(ABC):
    """How a model is made trainable (LoRA, DoRA, full...), usable outside our trainers: SAGE
    components call ``prepare_model`` on a model they own and build the optimizer from
    ``get_optimizer_grouped_parameters``."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The strategy's registered name."""

    @abstractmethod
    def prepare_model(self, model: Any, config: Any = None) -> Any:
        """Return ``model`` ready to train with this strategy (e.g. wrapped with an adapter)."""

    @abstractmethod
    def get_trainable_parameters(self, model: Any) -> Iterator[Any]:
        """The parameters that train."""

    def get_optimizer_grouped_parameters(self, model: Any, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        return [{"params": list(self.get_trainable_parameters(model)), "weight_decay": weight_decay}]

    def merge_and_unload(self, model: Any) -> Any:
        return model
