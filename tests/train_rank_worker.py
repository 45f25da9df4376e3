"""`python -m affectvlm.train` (run under torchrun) that also writes this rank's final trained-module state to
OUT/rank<r>.safetensors, so a test can compare the ranks: the real training runs, unchanged."""

import os
import sys

from safetensors.torch import save_file

import affectvlm.train.loop as loop
from affectvlm.train.main import main

train = loop.train


def train_and_write_state(module, train_module, *args, **kwargs):
    state = train(module, train_module, *args, **kwargs)
    out = sys.argv[sys.argv.index("--out") + 1]
    tensors = {name: tensor.detach().clone() for name, tensor in train_module.state_dict().items()}
    save_file(tensors, os.path.join(out, f"rank{os.environ.get('RANK', '0')}.safetensors"))
    return state


loop.train = train_and_write_state
sys.exit(main())
