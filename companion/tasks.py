"""Associative recall: attention as a learned dictionary lookup (book chapter 1).

Each example is a small dictionary of ``n_pairs`` (key, value) pairs with distinct keys, and a query
that is one of the keys. The answer is that key's value. Keys and values are symbols from two
vocabularies; a pair is one token, the sum of its key's and its value's embeddings.

One attention layer solves it exactly when it learns to (1) score the query against the *key part*
of each pair token, ignoring the value part, and (2) read the *value part* out of the token it
found. Its attention weights then show the lookup: all weight on the matching pair.

The baseline ``mixer="mean"`` replaces attention by the average of the pair tokens (same read-out,
same parameters but for attention's). The average of ``key_i + value_i`` is the sum of all keys plus
the sum of all values: which value went with which key is gone, so no read-out can do better than
guess among the values present, about ``1 / n_pairs``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from companion.attention import MultiHeadAttention
from companion.budget import by_budget
from companion.utils import progress

__all__ = ["RecallBatch", "RecallConfig", "RecallModel", "RecallResult", "sample_recall", "train_recall"]


@dataclass(frozen=True)
class RecallConfig:
    """The task's sizes and the training settings."""

    n_pairs: int = 16  # S, pairs in each dictionary
    n_keys: int = 64  # key vocabulary
    n_values: int = 64  # value vocabulary (the number of classes)
    embed_dim: int = 32  # E
    num_heads: int = 1  # H
    mixer: str = "attention"  # or "mean": the baseline without attention
    batch_size: int = 256
    lr: float = 3e-3
    steps: int | None = None  # default: by budget


@dataclass
class RecallBatch:
    keys: Tensor  # (B, S) key ids, distinct within a row
    values: Tensor  # (B, S) value ids
    query: Tensor  # (B,) key id of the pair asked for
    target_index: Tensor  # (B,) position of that pair
    answer: Tensor  # (B,) its value id


def sample_recall(batch_size: int, config: RecallConfig, generator: torch.Generator | None = None) -> RecallBatch:
    """Draw ``batch_size`` dictionaries and queries."""
    if config.n_pairs > config.n_keys:
        raise ValueError(f"n_pairs ({config.n_pairs}) cannot exceed n_keys ({config.n_keys}): keys are distinct")
    # Distinct keys per row: the first n_pairs entries of a random permutation.
    keys = torch.rand(batch_size, config.n_keys, generator=generator).argsort(-1)[:, : config.n_pairs]
    values = torch.randint(config.n_values, (batch_size, config.n_pairs), generator=generator)
    target_index = torch.randint(config.n_pairs, (batch_size,), generator=generator)
    rows = torch.arange(batch_size)
    return RecallBatch(keys, values, keys[rows, target_index], target_index, values[rows, target_index])


class RecallModel(nn.Module):
    """Embeddings, one :class:`~companion.attention.MultiHeadAttention` layer, a linear read-out.

    With ``config.mixer == "mean"`` the attention layer is replaced by the mean of the pair tokens,
    concatenated with the query and passed through an MLP: the baseline without attention.
    """

    def __init__(self, config: RecallConfig) -> None:
        super().__init__()
        if config.mixer not in ("attention", "mean"):
            raise ValueError(f"mixer must be 'attention' or 'mean', got {config.mixer!r}")
        self.mixer = config.mixer
        self.key_embedding = nn.Embedding(config.n_keys, config.embed_dim)
        self.value_embedding = nn.Embedding(config.n_values, config.embed_dim)
        if self.mixer == "attention":
            self.attention = MultiHeadAttention(config.embed_dim, config.num_heads)
        else:
            e = config.embed_dim
            self.pool_mlp = nn.Sequential(nn.Linear(2 * e, 4 * e), nn.ReLU(), nn.Linear(4 * e, e))
        self.readout = nn.Linear(config.embed_dim, config.n_values)

    def forward(self, batch: RecallBatch, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Return logits over values ``(B, n_values)`` and, if asked, weights ``(B, H, 1, S)``."""
        pairs = self.key_embedding(batch.keys) + self.value_embedding(batch.values)  # (B, S, E)
        query = self.key_embedding(batch.query)[:, None, :]  # (B, 1, E)
        if self.mixer == "mean":
            read = self.pool_mlp(torch.cat([pairs.mean(1), query[:, 0]], -1))  # (B, E)
            return self.readout(read), None
        read, weights = self.attention(query, pairs, pairs, need_weights=need_weights)  # (B, 1, E)
        return self.readout(read[:, 0]), weights  # (B, n_values)


@dataclass
class RecallResult:
    model: RecallModel
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # on the training batch
    test_accuracy: float = float("nan")  # on fresh dictionaries
    seconds: float = float("nan")


@torch.no_grad()
def recall_accuracy(model: RecallModel, config: RecallConfig, n: int = 4096, seed: int = 12345) -> float:
    """Accuracy on ``n`` fresh dictionaries drawn with ``seed``."""
    batch = sample_recall(n, config, torch.Generator().manual_seed(seed))
    logits, _ = model(batch)
    return float((logits.argmax(-1) == batch.answer).float().mean())


def train_recall(config: RecallConfig | None = None, *, seed: int = 0, budget: str | None = None,
                 log_every: int = 10, show_progress: bool = True) -> RecallResult:
    """Train a :class:`RecallModel` with Adam and cross-entropy on freshly sampled batches.

    Steps by budget unless ``config.steps`` is set: quick 200, book 600, full 3000.
    """
    config = config or RecallConfig()
    steps = config.steps or by_budget(quick=200, book=600, full=3000, budget=budget)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = RecallModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    result = RecallResult(model)
    start = time.perf_counter()
    bar = progress(total=steps, desc="associative recall", disable=not show_progress)
    for step in range(1, steps + 1):
        batch = sample_recall(config.batch_size, config, generator)
        logits, _ = model(batch)
        loss = F.cross_entropy(logits, batch.answer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps:
            accuracy = float((logits.argmax(-1) == batch.answer).float().mean())
            result.steps.append(step)
            result.loss.append(loss.item())
            result.accuracy.append(accuracy)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
        bar.update(1)
    bar.close()
    result.seconds = time.perf_counter() - start
    model.eval()
    result.test_accuracy = recall_accuracy(model, config)
    return result
