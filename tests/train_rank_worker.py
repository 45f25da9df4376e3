"""`python -m affectvlm.train` (run under torchrun) that also writes this rank's final trained-module state to
OUT/rank<r>.safetensors, and where it trained (process-group backend, device of the weights) to OUT/rank<r>.json,
so a test can compare the ranks: the real training runs, unchanged."""

import json
import os
import sys

import torch.distributed as dist
from safetensors.torch import save_file

import affectvlm.train.loop as loop
from affectvlm.train.main import main

train = loop.train


def train_and_write_state(module, train_module, *args, **kwargs):
    state = train(module, train_module, *args, **kwargs)
    out = os.path.join(sys.argv[sys.argv.index("--out") + 1], f"rank{os.environ.get('RANK', '0')}")
    tensors = {name: tensor.detach().clone() for name, tensor in train_module.state_dict().items()}
    save_file(tensors, out + ".safetensors")
    where = {"backend": dist.get_backend(), "device": str(next(train_module.parameters()).device)}
    with open(out + ".json", "w") as file:
        json.dump(where, file)
    return state


loop.train = train_and_write_state
sys.exit(main())
