"""Matching Networks: attention maths by hand, full-context embeddings, and a short real training run."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn

from fsl_lightning.backbones import Conv4
from fsl_lightning.data import EpisodicDataModule
from fsl_lightning.episode import Episode, EpisodeSpec
from fsl_lightning.methods.functional import attention_class_log_probabilities, cosine_similarity_matrix
from fsl_lightning.methods.matchingnet import MatchingNet, QueryAttentionEmbedding


def _episode(support, support_labels, queries, query_labels) -> Episode:
    """An episode of flat 2-d "images" [N, 1, 1, 2] for a Flatten backbone."""
    as_images = lambda rows: torch.tensor(rows, dtype=torch.float32).view(len(rows), 1, 1, -1)  # noqa: E731
    way = max(support_labels) + 1
    return Episode(
        as_images(support),
        torch.tensor(support_labels),
        as_images(queries),
        torch.tensor(query_labels),
        torch.arange(way),
    )


def test_cosine_similarity_by_hand():
    queries = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    keys = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([[1.0, 0.0, -1.0, 1 / math.sqrt(2)], [0.0, 1.0, 0.0, 1 / math.sqrt(2)]])
    assert torch.allclose(cosine_similarity_matrix(queries, keys), expected, atol=1e-6)


def test_attention_sums_the_softmax_weights_of_each_class():
    # softmax of log(1), log(2), log(3) is (1/6, 2/6, 3/6); support labels 1, 0, 1 -> P = (2/6, 4/6)
    scores = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))
    log_p = attention_class_log_probabilities(scores, torch.tensor([1, 0, 1]), way=2)
    assert torch.allclose(log_p.exp(), torch.tensor([[2 / 6, 4 / 6]]), atol=1e-6)


def test_matchingnet_logits_are_log_attention_probabilities():
    # support (1, 0) class 0, (0, 1) and (-1, 0) class 1; query (2, 0): cosines 1, 0, -1
    episode = _episode([[1, 0], [0, 1], [-1, 0]], [0, 1, 1], [[2, 0]], [0])
    logits = MatchingNet(backbone=nn.Flatten()).episode_logits(episode)
    total = math.e + 1 + math.exp(-1)
    expected = torch.tensor([[math.log(math.e / total), math.log((1 + math.exp(-1)) / total)]])
    assert torch.allclose(logits, expected, atol=1e-6)
    # the base class's cross-entropy on these logits is the negative log-likelihood of the true class
    loss = MatchingNet(backbone=nn.Flatten()).episode_loss(episode, logits)
    assert loss.item() == pytest.approx(-math.log(math.e / total), abs=1e-6)


def test_full_context_embeddings_with_zero_lstm_weights_reduce_to_the_plain_embeddings():
    # All-zero LSTM weights: every gate is 0.5 and the candidate tanh(0) = 0, so cell and hidden states stay 0;
    # then g(x_i, S) = g'(x_i) and f(x, S) = h_K = 0 + f'(x): the logits equal those without FCE.
    episode = _episode([[1, 0], [0, 1], [-1, 2]], [0, 1, 1], [[2, 1], [0, 3]], [0, 1])
    method = MatchingNet(backbone=nn.Flatten(), fce=True, embedding_dim=2)
    with torch.no_grad():
        for parameter in [*method.support_context.parameters(), *method.query_attention.parameters()]:
            parameter.zero_()
    plain = MatchingNet(backbone=nn.Flatten()).episode_logits(episode)
    assert torch.allclose(method.episode_logits(episode), plain, atol=1e-6)


def test_full_context_embeddings_change_the_logits_and_get_gradients():
    torch.manual_seed(0)
    episode = _episode([[1, 0], [0, 1], [-1, 2]], [0, 1, 1], [[2, 1], [0, 3]], [0, 1])
    method = MatchingNet(backbone=nn.Flatten(), fce=True, embedding_dim=2, fce_read_steps=3)
    logits = method.episode_logits(episode)
    assert not torch.allclose(logits, MatchingNet(backbone=nn.Flatten()).episode_logits(episode))
    method.episode_loss(episode, logits).backward()
    assert method.support_context.lstm.weight_hh_l0.grad.abs().sum() > 0
    assert method.query_attention.cell.weight_ih.grad.abs().sum() > 0


def test_the_attention_lstm_reads_r_from_the_previous_hidden_state_as_eqs_3_to_6():
    """One read step by hand: h_0 = f'(x), c_0 = 0, r_0 = softmax(h_0 . g) g (not 0), then the LSTM step."""
    torch.manual_seed(0)
    attention_lstm = QueryAttentionEmbedding(embedding_dim=3, read_steps=1)
    queries, support = torch.randn(2, 3), torch.randn(4, 3)
    readout = (queries @ support.T).softmax(dim=-1) @ support
    hidden, _ = attention_lstm.cell(torch.cat([queries, readout], dim=-1), (queries, torch.zeros(2, 3)))
    assert torch.allclose(attention_lstm(queries, support), hidden + queries, atol=1e-6)


def test_full_context_embeddings_name_a_wrong_embedding_size():
    episode = _episode([[1, 0], [0, 1]], [0, 1], [[2, 1]], [0])
    with pytest.raises(ValueError, match="embedding_dim=64.*\\(2,\\)"):
        MatchingNet(backbone=nn.Flatten(), fce=True, embedding_dim=64).episode_logits(episode)


def _train_and_test(method, omniglot, tmp_path, train: EpisodeSpec, steps: int) -> dict:
    """Untrained and trained 5-way 1-shot test accuracy after ``steps`` training episodes on real Omniglot.

    Small on purpose (2 CPU cores): 50 test episodes of 5 queries per class.
    """
    L.seed_everything(0)
    datamodule = EpisodicDataModule(
        omniglot,
        train=train,
        evaluation=EpisodeSpec(way=5, shot=1, query=5),
        train_episodes_per_epoch=steps,
        val_episodes=5,
        test_episodes=50,
    )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    untrained = trainer.test(method, datamodule=datamodule, verbose=False)[0]["test/acc"]
    trainer.fit(method, datamodule=datamodule)
    trained = trainer.test(method, datamodule=datamodule, verbose=False)[0]["test/acc"]
    return {"untrained": untrained, "trained": trained}


def test_matchingnet_learns_omniglot(omniglot, tmp_path):
    # Full-context embeddings are checked above; training them here too would double the run on 2 CPU cores.
    method = MatchingNet(backbone=Conv4(in_channels=1), optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    result = _train_and_test(method, omniglot, tmp_path, EpisodeSpec(way=5, shot=1, query=5), steps=100)
    # chance is 0.2 and an untrained Conv4 already gets about 0.55; 100 episodes reach about 0.7
    assert result["trained"] > 0.62, result
    assert result["trained"] > result["untrained"] + 0.08, result


def test_predict_writes_the_attention_probability_of_the_best_class():
    # as above: query (2, 0) has P(class 0) = e / (e + 1 + 1/e), P(class 1) = (1 + 1/e) / (e + 1 + 1/e)
    episode = _episode([[1, 0], [0, 1], [-1, 0]], [0, 1, 1], [[2, 0]], [-1])
    method = MatchingNet(backbone=nn.Flatten())
    rows = method.predict_step({"episode": episode, "query_files": ["q.png"], "class_names": ["a", "b"]}, 0)
    total = math.e + 1 + math.exp(-1)
    assert MatchingNet.score_name == "probability"
    assert rows == [
        {"query_file": "q.png", "predicted_class": "a", "probability": pytest.approx(math.e / total), "outlier": ""}
    ]  # no validation behind this method: no outlier check
    probabilities = method.prediction_scores(method.episode_logits(episode))
    assert torch.allclose(probabilities, torch.tensor([[math.e / total, (1 + math.exp(-1)) / total]]))
