"""What a run saves is served the way it was trained.

A base model whose tokenizer has no chat template is fine-tuned with a template file, and with no
template (the built-in fallback). The saved adapter/ and merged/ directories are then read back with
plain transformers, as vLLM, TGI or an Ollama importer would: their tokenizer renders a prompt to
exactly the token ids training used, and greedy generation stops at the template's end-of-turn token.
"""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sage_libs.sage_finetune import DataConfig, LoRAConfig, TrainingConfig, create_loader, create_trainer  # noqa: E402
from sage_libs.sage_finetune.data.templates import FALLBACK_CHAT_TEMPLATE  # noqa: E402

from .helpers import torch_threads
from .paths import REPO  # noqa: E402

EXAMPLE_DATA = REPO / "examples" / "data"
AGENT = REPO / "examples" / "agent"

# turns end with <|eot_id|>, which is not the tokenizer's eos (<|im_end|>)
END_OF_TURN = "<|eot_id|>"
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|eot_id|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QUESTION = "What is 3 + 4?"
ANSWER = "The answer is 7."


@pytest.fixture(scope="module")
def base_without_template(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sage_libs.sage_finetune.utils.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("base-no-template")
    build_tiny_model(out, corpus_files=sorted(EXAMPLE_DATA.glob("*.jsonl")), vocab_size=512, chat_template=None)
    # like a Llama-3 base: an end-of-turn token reserved in the vocabulary that is not the eos
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_special_tokens({"additional_special_tokens": [END_OF_TURN]})
    model = AutoModelForCausalLM.from_pretrained(out)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template is None and tok.eos_token != END_OF_TURN
    return out


def records(n=16):
    # one short exchange, repeated: a few steps teach the tiny model to answer and then stop
    return [{"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}] * n


@pytest.fixture(scope="module", params=["template-file", "fallback"])
def run(request, base_without_template, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    template = None
    if request.param == "template-file":
        path = out / "chatml.jinja"
        path.write_text(TEMPLATE, encoding="utf-8")
        template = str(path)
    tc = TrainingConfig(model_name_or_path=str(base_without_template), output_dir=str(out / "run"), max_steps=30,
                        per_device_train_batch_size=4, learning_rate=5e-3, warmup_steps=0, max_seq_length=64,
                        logging_steps=10, save_strategy="no", disable_tqdm=True, eval_on_start=False, seed=0)
    trainer = create_trainer("lora", training_config=tc, data_config=DataConfig(chat_template=template),
                             lora_config=LoRAConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                    # the new end-of-turn token's output row must learn
                                                    modules_to_save=["lm_head"]))
    with torch_threads(1):
        trainer.train(records())
        adapter = trainer.save_model(out / "adapter")
        merged = trainer.merge_and_save(out / "merged")
    yield {"kind": request.param, "trainer": trainer, "adapter": Path(adapter), "merged": Path(merged),
           "template": TEMPLATE if template else FALLBACK_CHAT_TEMPLATE}


def trained_prompt_ids(trainer):
    """The token ids training used before the first trained token of the reply."""
    ds = trainer.prepare_dataset(records(1), "eval")
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    first = next(i for i, label in enumerate(labels) if label != -100)
    return ids[:first]


@pytest.mark.parametrize("folder", ["adapter", "merged"])
def test_saved_tokenizer_renders_prompts_exactly_as_training(run, folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run[folder])
    assert tok.chat_template == run["template"]
    served = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False)
    assert list(served) == trained_prompt_ids(run["trainer"])


def test_merged_model_stops_at_the_end_of_turn_token(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run["merged"])
    model = AutoModelForCausalLM.from_pretrained(run["merged"])
    config = json.loads((run["merged"] / "generation_config.json").read_text())
    eos = config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
    end_of_turn = END_OF_TURN if run["kind"] == "template-file" else tok.eos_token
    assert tok.convert_tokens_to_ids(end_of_turn) in eos and tok.eos_token_id in eos
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():  # plain transformers: generation_config.json decides where to stop
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    assert new[-1] == tok.convert_tokens_to_ids(end_of_turn) and len(new) < 24, tok.decode(new)
    assert tok.decode(new, skip_special_tokens=True).strip() == ANSWER


def test_trainer_generate_equals_a_manual_render(run):
    trainer = run["trainer"]
    tok, model = trainer.tokenizer, trainer.model
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], chat_template=run["template"],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    stop = tok.convert_tokens_to_ids(END_OF_TURN if run["kind"] == "template-file" else tok.eos_token)
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                             eos_token_id=stop, pad_token_id=tok.pad_token_id)
    manual = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert trainer.generate(QUESTION, max_new_tokens=24) == manual
    assert manual.strip() == ANSWER


def test_chat_session_on_adapter_and_merged(run):
    from sage_libs.sage_finetune.serving import ChatSession

    for folder in ("adapter", "merged"):
        chat = ChatSession.load(run[folder], max_new_tokens=24)
        pieces = []
        assert chat.ask(QUESTION, on_text=pieces.append).strip() == ANSWER
        assert "".join(pieces).strip() == ANSWER  # streamed as it was generated
        chat.ask("And 2 + 2?")
        assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
        chat.reset()
        assert chat.history == []


def test_chat_command(run, capsys, monkeypatch):
    import io

    from sage_libs.sage_finetune.cli import main

    assert main(["chat", str(run["merged"]), "--prompt", QUESTION, "--max-new-tokens", "24"]) == 0
    assert capsys.readouterr().out.strip() == ANSWER
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\n/reset\n{QUESTION}\n"))
    assert main(["chat", str(run["adapter"]), "--system", "Be brief.", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 2 and out.count(ANSWER) == 2, out


def test_chat_command_errors(tmp_path, capsys):
    from sage_libs.sage_finetune.cli import main

    assert main(["chat", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a usage error, before anything is loaded
        main(["chat", str(tmp_path), "--max-new-tokens", "0"])
    assert exc.value.code == 2 and "argument --max-new-tokens: must be >= 1, got 0" in capsys.readouterr().err


def test_named_templates_of_a_tokenizer(tiny_model_dir, tmp_path):
    """A tokenizer with several named templates: 'default' is used unless data.chat_template names
    another; the one used is what the saved tokenizer carries."""
    from transformers import AutoTokenizer

    from sage_libs.sage_finetune.data.templates import resolve_chat_template

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = {"default": TEMPLATE, "tool_use": TEMPLATE.replace("<|im_start|>", "<|im_start|>tool-")}
    assert resolve_chat_template(None, tok).text == TEMPLATE
    assert resolve_chat_template("tool_use", tok).text == tok.chat_template["tool_use"]
    from sage_libs.sage_finetune import ConfigError

    with pytest.raises(ConfigError, match=r"data.chat_template: other: no such file.*named templates: default, "
                                          "tool_use"):
        resolve_chat_template("other", tok)
    tok.chat_template = {"a": TEMPLATE, "b": TEMPLATE}
    with pytest.raises(ConfigError, match="several chat templates .* none is called 'default'"):
        resolve_chat_template(None, tok)


def test_agent_evaluation_same_with_template_file_or_text(tiny_model_dir, tmp_path):
    from sage_libs.sage_finetune.utils.tiny import CHATML_TEMPLATE

    path = tmp_path / "t.jinja"
    path.write_text(CHATML_TEMPLATE, encoding="utf-8")
    held_out = create_loader("trajectory").load(AGENT / "agent_eval.jsonl", max_samples=2)
    scores = []
    for template in (str(path), CHATML_TEMPLATE):
        tc = TrainingConfig(model_name_or_path=str(tiny_model_dir), output_dir=str(tmp_path / "o"), max_seq_length=512)
        trainer = create_trainer("agent", method="lora", training_config=tc, lora_config=LoRAConfig(r=4),
                                 data_config=DataConfig(chat_template=template), agent_eval_max_trajectories=2,
                                 agent_eval_max_new_tokens=8)
        # auto: decided from the template text (this one renders tool calls), never from the path
        assert trainer.inner.render_options().agent_format == "tool_calls"
        scores.append(trainer.evaluate_agent(held_out))
    assert scores[0] == scores[1] and scores[0]["agent_steps"] > 0


def test_data_inspect_renders_like_training(tiny_model_dir, tmp_path, capsys):
    """`data inspect` resolves the template, agent format, tools and loader as training does."""
    import yaml

    from sage_libs.sage_finetune.cli import main

    config = {"method": "lora",
              "training": {"model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "o"),
                           "max_seq_length": 1024},
              "data": {"train_file": str(AGENT / "agent_train.jsonl"), "max_samples": 8, "agent_format": "tool_calls",
                       "tools_file": str(AGENT / "tools.json")}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["data", "inspect", str(path), "--json", "--png", ""]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trainer = create_trainer("lora", training_config=config["training"], data_config=config["data"])
    dataset = trainer.prepare_dataset(config["data"]["train_file"], "train")
    assert summary["tokens"] == sum(dataset["length"])
    assert summary["trained_tokens"] == sum(sum(1 for x in row if x != -100) for row in dataset["labels"])
