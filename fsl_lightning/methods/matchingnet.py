"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fsl_lightning.episode import SupportSet
from fsl_lightning.methods.base import EmbeddingMethod, LabelledFeatures
from fsl_lightning.methods.functional import attention_class_log_probabilities, cosine_similarity_matrix
from fsl_lightning.methods.registry import registered


class SupportContextEmbedding(nn.Module):
    """Full-context embedding g of the support set (Vinyals et al. 2016, appendix A.2).

    A bidirectional LSTM reads the support embeddings as one sequence; each item becomes
    ``g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i``. support [S, D] -> [S, D].
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(embedding_dim, embedding_dim, bidirectional=True, batch_first=True)

    def forward(self, support: Tensor) -> Tensor:
        outputs, _ = self.lstm(support.unsqueeze(0))  # [1, S, 2D]: forward and backward states side by side
        forward_states, backward_states = outputs[0].chunk(2, dim=-1)
        return support + forward_states + backward_states


class QueryAttentionEmbedding(nn.Module):
    """Full-context embedding f of the queries: an attention LSTM with K read steps (appendix A.1).

    Each step k:  r_{k-1} = sum_i softmax_i(h_{k-1} · g(x_i)) g(x_i);  ĥ_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}],
    c_{k-1});  h_k = ĥ_k + f'(x) (eqs. 3-6). The output is h_K. The paper leaves h_0, c_0 and K unstated: here
    h_0 = f'(x) and c_0 = 0, as CloserLook's ``FullyContextualEmbedding``, whose r is read from h before each
    step too; K is ``read_steps`` (CloserLook reads as many times as there are support images).

    The paper concatenates the read-out r to the LSTM's hidden state; here r is concatenated to the
    LSTM's input instead, which gives the same gate pre-activations (both are one linear map of
    [f'(x), h, r]) while the hidden state keeps the embedding size D needed by ``h_k = ĥ_k + f'(x)``.
    queries [Q, D], support [S, D] (already context-embedded) -> [Q, D].
    """

    def __init__(self, embedding_dim: int, read_steps: int) -> None:
        super().__init__()
        if read_steps < 1:
            raise ValueError(f"The attention LSTM needs at least one read step, got fce_read_steps={read_steps}.")
        self.cell = nn.LSTMCell(2 * embedding_dim, embedding_dim)
        self.read_steps = read_steps

    def forward(self, queries: Tensor, support: Tensor) -> Tensor:
        hidden = queries
        cell = torch.zeros_like(queries)
        for _ in range(self.read_steps):
            attention = (hidden @ support.T).softmax(dim=-1)  # [Q, S]: a(h_{k-1}, g(x_i)), dot products (eq. 6)
            readout = attention @ support  # r_{k-1} (eq. 5)
            lstm_hidden, cell = self.cell(torch.cat([queries, readout], dim=-1), (hidden, cell))
            hidden = lstm_hidden + queries  # skip connection to f'(x) (eq. 4)
        return hidden


@registered
class MatchingNet(EmbeddingMethod):
    """Softmax attention over cosine similarities to the support set, summed per class (eq. 1-2).

    ``P(y = k | x) = sum_{i: y_i = k} softmax_i(cos(f(x), g(x_i)))``; the logits are ``log P``, so the
    base class's cross-entropy is exactly the paper's negative log-likelihood. :meth:`fit_support` keeps g(S)
    (:class:`~fsl_lightning.methods.base.LabelledFeatures`); in training and evaluation support and queries go
    through the backbone in one batch (:class:`~fsl_lightning.methods.base.EmbeddingMethod`).

    Args:
        backbone, optimizer, lr_scheduler, scheduler_interval: see :class:`FewShotMethod`.
        fce: full-context embeddings (bidirectional LSTM g over the support set, attention LSTM f over
            the queries). The paper reports no gain from them on Omniglot, so the Omniglot configs leave them off.
        embedding_dim: size D of the backbone's flat embeddings, needed to build the LSTMs
            (64 for Conv4 on 28x28 images, 1600 on 84x84).
        fce_read_steps: K, the attention LSTM's read steps over the support set.
    """

    def __init__(
        self,
        *args: Any,
        fce: bool = False,
        embedding_dim: int = 64,
        fce_read_steps: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.embedding_dim = embedding_dim
        self.support_context = SupportContextEmbedding(embedding_dim) if fce else None
        self.query_attention = QueryAttentionEmbedding(embedding_dim, fce_read_steps) if fce else None

    def fit_features(self, support_features: Tensor, support: SupportSet) -> LabelledFeatures:
        """g(S): the support embeddings themselves, or their full-context versions with ``fce`` (the bidirectional
        LSTM reads the whole support set)."""
        if self.support_context is not None:
            self._check_embedding_size(support_features)
            support_features = self.support_context(support_features)
        return LabelledFeatures(support_features, support.labels, support.way)

    def score_features(self, state: LabelledFeatures, query_features: Tensor) -> Tensor:
        """f(Q) (with ``fce``: the attention LSTM, each query on its own, over g(S)), then attention over g(S)."""
        if self.query_attention is not None:
            query_features = self.query_attention(query_features, state.features)
        # Similarities and log-sum-exp in fp32: under bf16 the attention weights of near-equal cosines tie.
        similarities = cosine_similarity_matrix(query_features.float(), state.features.float())
        return attention_class_log_probabilities(similarities, state.labels, state.way)

    def _check_embedding_size(self, support: Tensor) -> None:
        if support.dim() != 2 or support.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"Full-context embeddings were built for embeddings of size embedding_dim={self.embedding_dim}, "
                f"but the backbone gives {tuple(support.shape[1:])}: set embedding_dim to the backbone's flat "
                "output size (64 for Conv4 on 28x28 images, 1600 on 84x84)."
            )


__all__ = ["MatchingNet", "QueryAttentionEmbedding", "SupportContextEmbedding"]
