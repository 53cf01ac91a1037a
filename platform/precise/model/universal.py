"""Universal training model (paper section IV-C): a causal Transformer over the all-scene
sequence; the output at position t predicts item t+1 (sampled softmax, eq. 5); the user embedding
is the output at the last position.

Scores are cosine similarities divided by a temperature (item and user vectors L2-normalised, as
in the HSTU repository's sampled-softmax setup); the Transformer reads the raw item embeddings.
Negatives: `num_negatives` items drawn uniformly per position (HSTU's "local" sampling) plus,
optionally, `in_batch_negatives` items drawn from the batch's other targets (items of other
sequences, as the paper describes; popularity-biased, no logQ correction), or with
`full_softmax` every item (exact; what RecBole's SASRec trains with).
"""

from __future__ import annotations

import torch

from precise.model.base import SequenceModel
from precise.model.config import PAD
from precise.model.fusion import l2_normalize
from precise.model.losses import full_softmax_loss, sampled_softmax_loss


class UniversalModel(SequenceModel):
    causal = True

    def user_embeddings(self, input_ids: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised output at the last (most recent) position [B, W]."""
        return l2_normalize(self.encode(input_ids, table)[:, -1])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch["input_ids"], batch["target_ids"]
        cfg = self.config
        n_rows = cfg.num_items + 1
        has_target = targets != PAD
        pos_ids = targets[has_target]  # [P]
        if cfg.full_softmax:
            table = self.items()
            query = l2_normalize(self.encode(inputs, table)[has_target]) / cfg.temperature
            return full_softmax_loss(query @ l2_normalize(table).T, pos_ids)
        p, device = pos_ids.numel(), inputs.device
        shape = (cfg.num_negatives,) if cfg.shared_negatives else (p, cfg.num_negatives)
        neg_ids = torch.randint(1, n_rows, shape, device=device)
        if cfg.in_batch_negatives > 0 and p > 0:
            # Items of other sequences in the batch (shared by all rows).
            in_batch = pos_ids[torch.randint(0, p, (cfg.in_batch_negatives,), device=device)]
            neg_ids = torch.cat(
                [neg_ids, in_batch[None, :].expand(p, -1) if neg_ids.dim() == 2 else in_batch], -1
            )
        # Fold 1/temperature into the queries: one pass over [P, W] instead of over the logits.
        if not cfg.shared_negatives and n_rows <= cfg.num_negatives * cfg.width:
            # Per-position negatives, catalogue small next to the [P, R, W] gathered negatives:
            # one [P, n] matmul plus a gather computes the same logits with less memory.
            table = self.items()
            query = l2_normalize(self.encode(inputs, table)[has_target]) / cfg.temperature
            all_logits = query @ l2_normalize(table).T  # [P, n + 1]
            pos_logits = all_logits.gather(1, pos_ids[:, None]).squeeze(1)
            neg_logits = all_logits.gather(1, neg_ids)
            return sampled_softmax_loss(pos_logits, neg_logits, pos_ids, neg_ids)
        # Otherwise embed only the items used (the text tower runs once per distinct item).
        used = torch.cat([inputs.flatten(), pos_ids, neg_ids.flatten()])
        vectors = self.items(used)
        emb_in, pos_vec, neg_vec = vectors.split([inputs.numel(), p, neg_ids.numel()])
        query = l2_normalize(self.encoder(emb_in.view(*inputs.shape, -1), inputs != PAD)[has_target])
        query = query / cfg.temperature
        pos_logits = (query * l2_normalize(pos_vec)).sum(-1)
        neg_vec = l2_normalize(neg_vec)
        if cfg.shared_negatives:
            neg_logits = query @ neg_vec.T  # [P, R]
        else:
            neg_logits = torch.einsum("pw,prw->pr", query, neg_vec.view(p, -1, neg_vec.shape[-1]))
        return sampled_softmax_loss(pos_logits, neg_logits, pos_ids, neg_ids)
