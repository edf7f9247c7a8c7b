"""One definition per fine-tuning method: how a model becomes trainable and how its optimizer groups
its parameters. The trainers (:mod:`..trainers`) and the SAGE strategies (:mod:`..strategies`) both
call these, so "which parameters train, at which learning rate" is decided in one place.

    lora.py        PEFT LoRA config from ours, target / modules_to_save checks, PiSSA/OLoRA bookkeeping
    lora_plus.py   LoRA+ parameter groups (PEFT's grouping, the LoRA+ authors' reference)
    freeze.py      freeze tuning: which decoder layers (and embeddings / head) train
    optim.py       weight-decay groups as the HF Trainer forms them; full fine-tuning's unfreeze
"""
