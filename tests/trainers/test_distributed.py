"""Multi-process training on CPU: 2-process DDP over gloo (torchrun) equals one process with the
same global batch; DeepSpeed ZeRO-2 on CPU when deepspeed is installed."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..paths import EXAMPLE_DATA, REPO  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path, model_dir, **training):
    cfg = {"method": "lora",
           "training": {"model_name_or_path": str(model_dir), "output_dir": str(tmp_path / "single"), "max_steps": 4,
                        "per_device_train_batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 0,
                        "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True, "use_cpu": True,
                        "seed": 7, **training},
           "lora": {"r": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
           "data": {"train_file": str(EXAMPLE_DATA / "alpaca_train.jsonl"), "max_samples": 48}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(cmd, timeout=420, **env):
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result


def adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("ddp_chunked", [False, True], ids=["plain", "ddp-chunked-lm-loss"])
def test_ddp_two_processes_equal_one_process(tiny_model_dir, tmp_path, ddp_chunked):
    cfg = write_config(tmp_path, tiny_model_dir)
    cli = [sys.executable, "-m", "sage_libs.sage_finetune.cli", "train", str(cfg)]
    # one process: 4 per step x 2 accumulation = global batch 8
    run(cli + ["training.gradient_accumulation_steps=2"])
    # two processes: 4 per process x 2 processes = global batch 8. Without training.use_cpu, as a user
    # would launch it on a machine without GPUs: still one DDP job, not two separate trainings.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "-m", "sage_libs.sage_finetune.cli", "train", str(cfg), f"training.output_dir={tmp_path / 'ddp'}",
                "training.use_cpu=false"] + (["training.chunked_lm_loss=true"] if ddp_chunked else [])
    result = run(torchrun)
    assert result.stdout.count("Training finished.") == 1, result.stdout  # one job, one summary
    single, ddp = adapter(tmp_path / "single"), adapter(tmp_path / "ddp")
    assert single.keys() == ddp.keys()
    worst = max((single[k] - ddp[k]).abs().max().item() for k in single)
    print(f"max abs weight diff single vs DDP: {worst:.2e}")
    assert worst < 1e-5, worst  # same samples per step, same token normalisation; fp32 summation order differs
    changed = max((single[k]).abs().max().item() for k in single if "lora_B" in k)
    assert changed > 1e-3  # the adapters did train
    log_single = [json.loads(x) for x in (tmp_path / "single" / "trainer_log.jsonl").read_text().splitlines()]
    log_ddp = [json.loads(x) for x in (tmp_path / "ddp" / "trainer_log.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in log_ddp if "loss" in e]
    assert steps == [1, 2, 3, 4]  # written once, by rank 0 only
    for a, b in zip([e for e in log_single if "loss" in e], [e for e in log_ddp if "loss" in e]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["global_step"] == 4


def test_deepspeed_zero2_on_cpu(tiny_model_dir, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed not installed (pip install deepspeed)")
    ds_config = REPO / "examples" / "deepspeed" / "zero2.json"
    cfg = write_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "ds"), deepspeed=str(ds_config))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "-m", "sage_libs.sage_finetune.cli", "train", str(cfg)]
    run(torchrun, DS_ACCELERATOR="cpu", DS_BUILD_OPS="0")
    weights = adapter(tmp_path / "ds")
    assert max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k) > 1e-3
    log = [json.loads(x) for x in (tmp_path / "ds" / "trainer_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "ds" / "metrics.json").read_text())["global_step"] == 4


@pytest.mark.gpu
def test_fsdp_full_shard_on_gpus(tiny_model_dir, tmp_path):
    """FSDP through the HF Trainer needs CUDA (it is dropped or refused on CPU)."""
    import torch

    n = max(1, min(2, torch.cuda.device_count()))
    cfg = write_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "fsdp"), use_cpu=False,
                       fsdp="full_shard auto_wrap",
                       fsdp_config={"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]})
    text = yaml.safe_load(cfg.read_text())
    text["method"] = "full"
    text.pop("lora")
    cfg.write_text(yaml.safe_dump(text))
    run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", f"--master_port={free_port()}",
         "-m", "sage_libs.sage_finetune.cli", "train", str(cfg)])
    from safetensors.torch import load_file

    weights = load_file(next((tmp_path / "fsdp" / "model").glob("*.safetensors")))
    assert weights and all(torch.isfinite(v).all() for v in weights.values())
    log = [json.loads(x) for x in (tmp_path / "fsdp" / "trainer_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
