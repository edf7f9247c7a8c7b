"""``agent``: supervised fine-tuning on tool-use trajectories, with any method underneath.

``create_trainer("agent", method="qlora", training_config=..., lora_config=...)`` wraps the
trainer of ``method`` (lora by default, or qlora, dora, full, ...): training is that trainer's,
unchanged. What the agent trainer adds is the evaluation an agent needs: on held-out
trajectories, at every step, the model greedily generates its next action from the history so
far, and we score

- ``next_action_accuracy``: action name and arguments both exactly right;
- ``action_name_accuracy``: the right tool, whatever the arguments;
- ``tool_call_validity``: generated calls that parse, name a known tool and carry its required
  arguments.

With ``eval_on_start`` the same numbers are measured before training (``*_before``).
"""

from __future__ import annotations

from typing import Any

from ..run import files as run_files
from ..utils.processes import is_main_process
from .objective import ObjectiveTrainer

__all__ = ["AgentTrainer", "evaluate_next_actions"]


def evaluate_next_actions(model: Any, tokenizer: Any, conversations: list[Any], *, chat_template: str,
                          max_new_tokens: int = 96, batch_size: int = 16,
                          stop_token_ids: list[int] | None = None) -> dict[str, Any]:
    """Greedy next-action generation for every assistant step of ``conversations``, rendered with
    ``chat_template`` (the template text) and stopped at ``stop_token_ids`` (default: the eos)."""
    import torch

    from ..data.trajectory import check_tool_call, next_action_cases, parse_action

    cases = []  # (prompt text, expected name, expected args, tools)
    for conv in conversations:
        for prefix, name, args in next_action_cases(conv):
            text = tokenizer.apply_chat_template(prefix, tools=conv.tools, chat_template=chat_template,
                                                 tokenize=False, add_generation_prompt=True)
            cases.append((text, name, args, conv.tools, _declared_tools(conv)))
    if not cases:
        return {}
    device = next(model.parameters()).device
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues every prompt from its last token
    exact = names = valid = calls = 0
    misses: list[dict[str, Any]] = []  # a few wrong predictions, to show what the model does
    try:
        for start in range(0, len(cases), batch_size):
            chunk = cases[start: start + batch_size]
            enc = tokenizer([c[0] for c in chunk], add_special_tokens=False, return_tensors="pt", padding=True)
            with torch.no_grad():
                out = model.generate(**{k: v.to(device) for k, v in enc.items()}, max_new_tokens=max_new_tokens,
                                     do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=stop_token_ids or tokenizer.eos_token_id)
            for (_, want_name, want_args, _, declared), row in zip(chunk, out[:, enc["input_ids"].shape[1]:]):
                generated = tokenizer.decode(row, skip_special_tokens=True)
                got_name, got_args, error = parse_action(generated)
                names += got_name == want_name
                hit = got_name == want_name and got_args == want_args
                exact += hit
                if not hit and len(misses) < 3:
                    misses.append({"expected": {"action": want_name, "input": want_args}, "generated": generated})
                if got_name is not None:
                    calls += 1
                    valid += error is None and check_tool_call(declared, got_name, got_args) is None
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    n = len(cases)
    return {"agent_steps": n, "next_action_accuracy": exact / n, "action_name_accuracy": names / n,
            "tool_call_validity": valid / calls if calls else 0.0, "agent_eval_misses": misses}


def _declared_tools(conv: Any) -> list[dict[str, Any]] | None:
    """The tools a conversation declares: in tool_calls style they are on the conversation; in
    react style they were written into the system prompt, so validity is checked by name and
    arguments against the original record's tools kept in ``meta``."""
    return conv.tools if conv.tools is not None else conv.meta.get("tools")


class AgentTrainer(ObjectiveTrainer):
    """Agent SFT over trajectories; ``method`` (or ``agent_config=AgentConfig(...)``) picks the
    fine-tuning method (default ``lora``). Other keyword arguments go to that method's trainer.
    ``agent_eval_max_new_tokens`` and ``agent_eval_max_trajectories`` override the config's.
    """

    method = "agent"
    extra_section = "agent"

    def __init__(self, method: str | None = None, agent_config: Any = None,
                 agent_eval_max_new_tokens: int | None = None, agent_eval_max_trajectories: int | None = None,
                 **kwargs: Any) -> None:
        from ..config import AgentConfig, coerce_config
        from ..errors import ConfigError
        from ..registry import get_trainer_class

        config = coerce_config(AgentConfig, agent_config, "agent_config") or AgentConfig()
        changes = {k: v for k, v in {"method": method, "eval_max_new_tokens": agent_eval_max_new_tokens,
                                     "eval_max_trajectories": agent_eval_max_trajectories}.items() if v is not None}
        self.agent_config = config.replace(**changes) if changes else config
        if self.agent_config.method == "agent":
            raise ConfigError("agent.method: must be a fine-tuning method such as lora, qlora, dora or full")
        self.inner = get_trainer_class(self.agent_config.method)(**kwargs)
        self.inner.run_config_extra.update(method="agent", agent=self.agent_config.to_dict())
        self.max_new_tokens = self.agent_config.eval_max_new_tokens
        self.max_trajectories = self.agent_config.eval_max_trajectories


    def _conversations(self, eval_dataset: Any) -> list[Any]:
        """Held-out trajectories as conversations, rendered like training renders them."""
        from ..data.formats import detect_format, to_conversation
        from ..data.pipeline import record_location

        inner = self.inner
        options = inner.render_options()  # the same rendering as training
        conversations = []
        for records in inner._record_sets(eval_dataset, "eval"):
            for index, record in enumerate(records):
                if detect_format(record) not in ("trajectory", "messages"):
                    continue
                where = record_location(records, index)
                conv = to_conversation(record, where=where, system_prompt=options.system_prompt,
                                       agent_format=options.agent_format, tools=options.tools)
                conv.meta["tools"] = record.get("tools", options.tools)
                conversations.append(conv)
                if self.max_trajectories and len(conversations) >= self.max_trajectories:
                    return conversations
        return conversations

    def evaluate_agent(self, eval_dataset: Any) -> dict[str, Any]:
        """Next-action metrics on held-out trajectories (records or a path)."""
        conversations = self._conversations(eval_dataset)
        self.inner.setup()
        return evaluate_next_actions(self.inner.model, self.inner.tokenizer, conversations,
                                     chat_template=self.inner.render_options().chat_template.text,
                                     max_new_tokens=self.max_new_tokens,
                                     stop_token_ids=self.inner.end_of_turn_token_ids())

    # ---- FineTuner -------------------------------------------------------------------------------
    def train(self, train_dataset: Any = None, eval_dataset: Any = None, config: Any = None) -> dict[str, Any]:
        inner = self.inner
        if eval_dataset is None and inner.data_config.eval_file:
            eval_dataset = inner.data_config.eval_file
        before = {}
        if eval_dataset is not None and inner.training_config.eval_on_start and config is None:
            before = {f"{k}_before": v for k, v in self.evaluate_agent(eval_dataset).items()
                      if k not in ("agent_steps", "agent_eval_misses")}
        metrics = inner.train(train_dataset, eval_dataset, config)
        if eval_dataset is not None:
            metrics.update(before)
            metrics.update(self.evaluate_agent(eval_dataset))
            metrics["method"] = f"agent/{inner.method}"
            if is_main_process():
                run_files.write_metrics(inner.training_config.output_dir, metrics)
        return metrics

    def evaluate(self, eval_dataset: Any) -> dict[str, Any]:
        metrics = self.inner.evaluate(eval_dataset)
        metrics.update(self.evaluate_agent(eval_dataset))
        return metrics

