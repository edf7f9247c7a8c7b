"""AgentTrainer: any method underneath, next-action metrics, CLI wiring."""


import pytest

from sage_libs.sage_finetune import ConfigError, DataConfig, LoRAConfig, TrainingConfig, create_loader, create_trainer

from ..paths import AGENT_DATA as AGENT  # noqa: E402


def tc(model_dir, tmp_path, **kw):
    base = dict(model_name_or_path=str(model_dir), output_dir=str(tmp_path / "out"), max_steps=3,
                per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=0, max_seq_length=512,
                save_strategy="no", eval_on_start=True, disable_tqdm=True)
    return TrainingConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["lora", "full"])
def test_agent_trainer_reports_next_action_metrics(tiny_model_dir, tmp_path, method):
    import json

    kwargs = {"lora_config": LoRAConfig(r=4)} if method == "lora" else {}
    trainer = create_trainer("agent", method=method, training_config=tc(tiny_model_dir, tmp_path),
                             data_config=DataConfig(agent_format="react", max_samples=16),
                             agent_eval_max_trajectories=3, agent_eval_max_new_tokens=24, **kwargs)
    assert type(trainer.inner).__name__ == {"lora": "LoRATrainer", "full": "FullTrainer"}[method]
    held_out = create_loader("trajectory").load(AGENT / "agent_eval.jsonl", max_samples=3)
    metrics = trainer.train(str(AGENT / "agent_train.jsonl"), held_out)
    assert metrics["method"] == f"agent/{method}" and metrics["agent_steps"] >= 6
    for key in ("next_action_accuracy", "action_name_accuracy", "tool_call_validity"):
        assert 0.0 <= metrics[key] <= 1.0 and 0.0 <= metrics[key + "_before"] <= 1.0
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["next_action_accuracy"] == metrics["next_action_accuracy"]
    import yaml

    run_config = yaml.safe_load((tmp_path / "out" / "run_config.yaml").read_text())
    assert run_config["method"] == "agent" and run_config["agent"]["method"] == method


def test_evaluation_scores_a_perfect_policy(tiny_tokenizer):
    """A 'model' that replays the reference answers scores 1.0 everywhere."""
    import torch

    from sage_libs.sage_finetune.data.formats import to_conversation
    from sage_libs.sage_finetune.data.trajectory import next_action_cases
    from sage_libs.sage_finetune.trainers.agent import evaluate_next_actions

    records = create_loader("trajectory").load(AGENT / "agent_eval.jsonl", max_samples=2)
    convs = [to_conversation(r, agent_format="react") for r in records]
    for conv, rec in zip(convs, records):
        conv.meta["tools"] = rec["tools"]
    answers = [m["content"] for conv in convs for m in conv.to_chat() if m["role"] == "assistant"]

    class Replay(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.i = 0

        def generate(self, input_ids, **kw):
            outs = []
            for row in input_ids:
                ids = tiny_tokenizer(answers[self.i] + "<|im_end|>", add_special_tokens=False)["input_ids"]
                self.i += 1
                outs.append(torch.cat([row, torch.tensor(ids)]))
            width = max(len(o) for o in outs)
            return torch.stack([torch.nn.functional.pad(o, (0, width - len(o)), value=0) for o in outs])

    n_cases = sum(len(next_action_cases(c)) for c in convs)
    assert n_cases == len(answers)
    metrics = evaluate_next_actions(Replay(), tiny_tokenizer, convs, chat_template=tiny_tokenizer.chat_template,
                                    batch_size=1)
    assert metrics["next_action_accuracy"] == metrics["action_name_accuracy"] == metrics["tool_call_validity"] == 1.0


def test_agent_method_must_be_a_real_method(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="agent.method: must be a fine-tuning method"):
        create_trainer("agent", method="agent", training_config=tc(tiny_model_dir, tmp_path))


def test_malformed_trajectories_file_is_rejected_with_its_line(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune.data.conversation import DataFormatError

    trainer = create_trainer("agent", training_config=tc(tiny_model_dir, tmp_path), lora_config=LoRAConfig(r=4))
    with pytest.raises(DataFormatError) as err:
        trainer.train(str(AGENT / "agent_eval_malformed.jsonl"))
    assert "agent_eval_malformed.jsonl:1: step 0: unknown tool 'web_browser'" in str(err.value)
    assert not (tmp_path / "out").exists()
