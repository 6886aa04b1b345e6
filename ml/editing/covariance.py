"""The key second moment ``C = E[k k^T]`` of an MLP output projection, estimated once on a
corpus and cached as safetensors.

ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", Sec. 3.1 eq. 2)
and MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer", eq. 14) both weight their
least-squares update by the covariance of the keys the layer already stores, ``C = K K^T``;
here it is the mean over every non-padding token of the corpus (``K K^T / n``), so it does not
grow with the corpus. The cache file is keyed by the model's weights hash, the layer, the
projection's name and the corpus hash; a hit is read back instead of recomputed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ml.editing.locate import ProjectionSite, capture_input
from ml.editing.metrics import prompt_ids, right_padded


def model_weights_hash(model: PreTrainedModel) -> str:
    """sha256 over parameter names and bytes (in ``named_parameters`` order)."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        data = parameter.detach().cpu().contiguous()
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def corpus_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


class KeyCovarianceStore:
    """Computes and caches ``C`` per (model, projection) on ``corpus``.

    ``model_key`` names the model's weights (e.g. ``ml.loading.weights_sha256`` of its
    directory); when None it is the hash of the weights in memory at first use, so edits made
    afterwards (sequential editing) keep using the original model's statistics, as in ROME.
    ``computed`` counts the estimates made (not read back), for tests.
    """

    def __init__(
        self,
        cache_dir: Path,
        corpus: Sequence[str],
        *,
        model_key: str | None = None,
        batch_size: int = 32,
    ) -> None:
        if not corpus:
            raise ValueError("the covariance corpus is empty")
        self.cache_dir = Path(cache_dir)
        self.corpus = list(corpus)
        self.corpus_key = corpus_hash(self.corpus)
        self.model_key = model_key
        self.batch_size = batch_size
        self.computed = 0
        self._memory: dict[str, Tensor] = {}

    def path_for(self, site: ProjectionSite) -> Path:
        assert self.model_key is not None
        name = f"cov_{self.model_key[:16]}_L{site.layer}_{site.name}_{self.corpus_key[:16]}"
        return self.cache_dir / f"{name}.safetensors"

    def second_moment(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, site: ProjectionSite
    ) -> Tensor:
        """``(in, in)`` float32 ``E[k k^T]`` over corpus tokens (computed or read back)."""
        if self.model_key is None:
            self.model_key = model_weights_hash(model)
        path = self.path_for(site)
        key = path.name
        if key in self._memory:
            return self._memory[key]
        if path.is_file():
            moment = load_file(str(path))["second_moment"]
        else:
            moment = estimate_second_moment(
                model, tokenizer, site, self.corpus, batch_size=self.batch_size
            )
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"second_moment": moment.contiguous()}, str(tmp))
            tmp.replace(path)
            self.computed += 1
        self._memory[key] = moment
        return moment


@torch.no_grad()
def estimate_second_moment(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    site: ProjectionSite,
    corpus: Sequence[str],
    *,
    batch_size: int = 32,
) -> Tensor:
    """Mean of ``k k^T`` over every real token of ``corpus`` (``[bos] + text``), float32."""
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else 0
    device = next(model.parameters()).device
    total = torch.zeros(site.in_features, site.in_features, dtype=torch.float64)
    count = 0
    for start in range(0, len(corpus), batch_size):
        rows = [prompt_ids(tokenizer, text) for text in corpus[start : start + batch_size]]
        ids, mask, _ = right_padded(rows, pad)
        with capture_input(site.module) as store:
            model(input_ids=ids.to(device), attention_mask=mask.to(device))
        keys = store["input"].reshape(-1, site.in_features)[mask.reshape(-1).bool().to(device)]
        keys = keys.double().cpu()
        total += keys.t() @ keys
        count += keys.shape[0]
    return (total / count).float()
