"""Exporting a trained checkpoint as a model to ship or share: the model's weights only, in float16, with the
text tower's token table cut down to the rows its prompt bank uses.

affect-tiny's weights are 37 MB in float32 (its training checkpoint, with the optimizer's state, 107 MB), and
two thirds of them are the token table: one row for each of the tokenizer's 49,408 tokens, of which the prompt
bank uses a few hundred; the other rows are never trained. The exported file keeps the used rows (a prompt made
of other tokens embeds them as zeros) and stores every weight in float16. It holds no optimizer or generator
state, so training cannot resume from it; `affectvlm predict`, `affectvlm evaluate` and the app read it like any
checkpoint (`load_checkpoint` restores the full table, in float32). `export_model` checks that the exported
model embeds every class prompt as the checkpoint did, and removes the file otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch

from affectvlm.train import checkpoint as ckpt

TOKEN_TABLE = "module.model.clip.token_embedding.weight"
STORED_DTYPE = torch.float16
PROMPT_TOLERANCE = 0.999  # least cosine similarity between a prompt's embedding before and after export


def export_model(source: str | Path, destination: str | Path) -> dict:
    """Write the model of checkpoint `source` to `destination`; returns the sizes before and after (bytes)."""
    from affectvlm.predict import predictor_of

    stored = ckpt.load_checkpoint(source)
    predictor = predictor_of(stored)  # refuses a checkpoint whose weights do not fit its model config
    tensors = {name: _stored(tensor) for name, tensor in stored.tensors.items() if name.startswith("module.model.")}
    info = {key: value for key, value in stored.info.items() if key not in ("format", "version", "optimizer")}
    info["export"] = {"dtype": str(STORED_DTYPE).removeprefix("torch."), "from": Path(source).name}
    if TOKEN_TABLE in tensors:
        rows = used_token_rows(predictor.model.tokenizer, predictor.bank)
        info["export"]["table_rows"] = {TOKEN_TABLE: len(tensors[TOKEN_TABLE])}
        tensors[TOKEN_TABLE] = tensors[TOKEN_TABLE][rows]
        tensors[ckpt.EXPORT_ROWS_PREFIX + TOKEN_TABLE] = rows
    destination = Path(destination)
    ckpt.save_checkpoint([destination], tensors, info)
    try:
        _require_same_prompt_embeddings(predictor, destination)
    except ckpt.CheckpointError:
        destination.unlink()
        raise
    return {"checkpoint_bytes": Path(source).stat().st_size, "exported_bytes": destination.stat().st_size}


def used_token_rows(tokenizer, bank) -> torch.Tensor:
    """The token ids of every string in the bank (its templates and words), plus the start and end tokens, an
    empty text's padding and 'an' (which the bank writes for 'a' before a vowel), sorted."""
    texts = _strings(bank.as_dict()) + ["an", ""]
    ids = tokenizer(texts).flatten()
    return torch.unique(ids).to(torch.int64)


def _strings(data) -> list[str]:
    if isinstance(data, str):
        return [data]
    values = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
    return [text for value in values for text in _strings(value)]


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(STORED_DTYPE) if tensor.is_floating_point() else tensor


def _require_same_prompt_embeddings(original, exported_path: Path) -> None:
    from affectvlm.predict import load_predictor

    exported = load_predictor(exported_path)
    similarity = (original.prompt_embeddings * exported.prompt_embeddings).sum(dim=1)
    if similarity.min() < PROMPT_TOLERANCE:
        worst = int(similarity.argmin())
        raise ckpt.CheckpointError(f"{exported_path}: the exported model embeds the prompt "
                                   f"'{original.prompt_texts[worst]}' differently (cosine {similarity[worst]:.4f})")
