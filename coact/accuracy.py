"""Accuracy of a sparsified model: teacher-forced perplexity on held-out text, dense vs sparse.

Why: a placement only matters for a model that still works. At SmolLM2's 90 % CATS setting perplexity goes from
~50 to ~11,800 (docs/DESIGN.md §2, "accuracy"), so every speed or run-length figure must name the perplexity of the
model it was measured on. This module measures it the same way everywhere:

- **Windows.** Tokens ``[start, start + tokens)`` of the corpus stream are cut into consecutive windows of ``ctx``
  tokens (:func:`coact.corpus.token_windows`, the same windows a trace uses); each window is an independent
  sequence. Within a window, every token after the first is predicted from the ones before it (teacher forcing),
  so a window of ``c`` tokens contributes ``c - 1`` predictions.
- **Perplexity** = exp(mean negative log-likelihood over all predictions of all windows), in float64.
- **Sparse model.** A forward hook on each layer's activation module replaces ``a = act(gate(x))`` by
  ``a * mask``, with ``mask = sparsifier.mask(layer, a)``: exactly the neurons a trace records as active contribute
  ``a_i * up_i(x) * down[:, i]``; the others contribute nothing (as in CATS, Lee et al. 2024).
- **Calibration** of thresholds (CATS) happens on tokens that are *not* evaluated: the caller passes calibrated
  thresholds (e.g. those of a profiling trace) or calibration windows that do not overlap the evaluated range.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch

from coact.corpus import token_windows
from coact.models import ModelHandle
from coact.sparsify import Sparsifier
from common.progress import ProgressFn, tracked


@dataclass
class Perplexity:
    """Teacher-forced perplexity of one model setting on one token range."""

    ppl: float
    nll: float
    n_predicted: int
    n_tokens: int
    ctx: int
    token_start: int
    achieved_sparsity: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def sparsified(handle: ModelHandle, sparsifier: Sparsifier | None) -> Iterator[list[list[float]]]:
    """Within the block, the model's FFNs compute with only the neurons ``sparsifier`` keeps (None: dense).

    Yields per-layer running sums ``[kept, total]`` of the mask, from which the achieved sparsity follows.
    """
    counts = [[0.0, 0.0] for _ in range(handle.n_layers)]
    if sparsifier is None:
        yield counts
        return

    def mask(layer: int, out: torch.Tensor) -> torch.Tensor:
        keep = sparsifier.mask(layer, out)
        counts[layer][0] += float(keep.sum())
        counts[layer][1] += float(keep.numel())
        return out * keep.to(out.dtype)

    with handle.act_hooks(mask):
        yield counts


def perplexity(handle: ModelHandle, stream: np.ndarray, *, start: int, tokens: int, ctx: int = 256,
               sparsifier: Sparsifier | None = None, batch: int = 4,
               progress: ProgressFn | None = None) -> Perplexity:
    """Perplexity of tokens ``[start, start + tokens)`` of ``stream`` (see the module docstring for the windows).

    ``sparsifier`` must already be calibrated (None: the dense model).
    """
    windows = token_windows(stream, int(start), int(tokens), int(ctx))
    if sparsifier is not None and sparsifier.needs_calibration:
        raise ValueError("calibrate the sparsifier before measuring perplexity")
    groups: list[list[np.ndarray]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch and len(groups[-1][0]) == len(w):
            groups[-1].append(w)
        else:
            groups.append([w])
    nll_sum, n_pred = 0.0, 0
    with sparsified(handle, sparsifier) as counts, torch.inference_mode():
        for g in tracked(groups, progress, "perplexity"):
            if len(g[0]) < 2:
                continue
            x = torch.as_tensor(np.stack(g), dtype=torch.long)
            logits = handle.model(x, use_cache=False).logits[:, :-1, :].double()
            logp = torch.log_softmax(logits, dim=-1)
            tgt = x[:, 1:]
            nll_sum += float(-logp.gather(-1, tgt.unsqueeze(-1)).sum())
            n_pred += int(tgt.numel())
    if n_pred == 0:
        raise ValueError("no token to predict: every window has fewer than 2 tokens")
    nll = nll_sum / n_pred
    achieved = None if sparsifier is None else [1.0 - k / t if t else 0.0 for k, t in counts]
    return Perplexity(ppl=float(np.exp(nll)), nll=nll, n_predicted=n_pred, n_tokens=int(tokens), ctx=int(ctx),
                      token_start=int(start), achieved_sparsity=achieved)
