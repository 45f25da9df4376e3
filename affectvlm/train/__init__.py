"""Training AffectVLM: `python -m affectvlm.train`, `torchrun -m affectvlm.train` and `affectvlm train`.

config.py builds the frozen TrainConfig from the command line; checkpoint.py reads and writes checkpoints;
loop.py holds the trained module, the loss over gathered embeddings and the training loop; main.py wires the
parts together.
"""
