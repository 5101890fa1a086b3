"""The runs behind the bars of the slow per-family accuracy tests, for BENCHMARKS.md.

    python benchmarks/family_bars.py metric [--seeds 0 1 2] [--methods ProtoNet ...]
    python benchmarks/family_bars.py transfer [--seeds 0 1 2] [--methods Baseline ...]
    python benchmarks/family_bars.py metric --variants --cpu-defaults   # correct runs only, with the CLI's CPU defaults

Trains each method in exactly the setting of its test (``tests/test_metric_measured.py``,
``tests/test_transfer_measured.py``, imported from there) for every seed, then once (seed 0) each broken variant
below: a subclass with the bug that a plausible mistake would make. Prints one markdown row per run: test
accuracy of the untrained and the trained network on the test's fixed episodes, and the run's seconds (for the
transfer family: pre-training and every evaluation of that backbone, as Baseline and RFS-simple, say). Run it on
one thread (``OMP_NUM_THREADS=1``), as the tests do; each correct run reproduces its test's numbers for seed 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import test_metric_measured as metric  # noqa: E402  (the tests hold the settings: one source of truth)
import test_transfer_measured as transfer  # noqa: E402
from fsl_lightning.callbacks import SpeedSettings  # noqa: E402
from fsl_lightning.data import Omniglot  # noqa: E402
from fsl_lightning.episode import Episode, LabelledBatch  # noqa: E402
from fsl_lightning.methods import Baseline, BaselinePlusPlus, RFSSimple  # noqa: E402
from fsl_lightning.methods.episode_classifiers import CosineProbe, LinearProbe  # noqa: E402
from fsl_lightning.methods.functional import (  # noqa: E402
    attention_class_log_probabilities,
    class_prototypes,
    class_sums,
    cosine_similarity_matrix,
)
from fsl_lightning.methods.matchingnet import MatchingNet  # noqa: E402
from fsl_lightning.methods.protonet import ProtoNet  # noqa: E402
from fsl_lightning.methods.relationnet import RelationNet, concatenate_pairs  # noqa: E402
from fsl_lightning.methods.siamese import Siamese  # noqa: E402


# ----- broken variants of the metric family ---------------------------------------------------------------------
class ProtoNetEuclidean(ProtoNet):
    """Bug: the distance is not squared (-||q - c|| as logits)."""

    def episode_logits(self, episode: Episode) -> Tensor:
        num_support = len(episode.support_images)
        embeddings = self.backbone(torch.cat([episode.support_images, episode.query_images])).float()
        prototypes = class_prototypes(embeddings[:num_support], episode.support_labels, episode.way)
        return -torch.cdist(embeddings[num_support:], prototypes)


class ProtoNetCosine(ProtoNet):
    """Bug: cosine similarity to the prototypes in place of the negative squared distance."""

    def episode_logits(self, episode: Episode) -> Tensor:
        num_support = len(episode.support_images)
        embeddings = self.backbone(torch.cat([episode.support_images, episode.query_images])).float()
        prototypes = class_prototypes(embeddings[:num_support], episode.support_labels, episode.way)
        return cosine_similarity_matrix(embeddings[num_support:], prototypes)


class MatchingNetAttentionOverQueries(MatchingNet):
    """Bug: the attention softmax normalises over the queries (dim 0) instead of the support set."""

    def episode_logits(self, episode: Episode) -> Tensor:
        num_support = len(episode.support_images)
        embeddings = self.backbone(torch.cat([episode.support_images, episode.query_images])).float()
        support, queries = embeddings[:num_support], embeddings[num_support:]
        log_attention = cosine_similarity_matrix(queries, support).log_softmax(dim=0)  # the bug: dim 0
        in_class = F.one_hot(episode.support_labels, episode.way).T.bool()  # [way, S]
        return log_attention.unsqueeze(1).masked_fill(~in_class, float("-inf")).logsumexp(dim=-1)


class MatchingNetNormalisedOverTheBatch(MatchingNet):
    """Bug: the "cosine" normalises each feature over the batch (dim 0) instead of each embedding over its features."""

    def episode_logits(self, episode: Episode) -> Tensor:
        num_support = len(episode.support_images)
        embeddings = self.backbone(torch.cat([episode.support_images, episode.query_images])).float()
        support, queries = embeddings[:num_support], embeddings[num_support:]
        similarities = F.normalize(queries, dim=0) @ F.normalize(support, dim=0).T  # the bug: dim 0
        return attention_class_log_probabilities(similarities, episode.support_labels, episode.way)


class MatchingNetProbabilitiesAsLogits(MatchingNet):
    """Bug: the attention probabilities P(k | x), not their logs, go to the cross-entropy (a second softmax)."""

    def episode_logits(self, episode: Episode) -> Tensor:
        return super().episode_logits(episode).exp()


class RelationNetShuffledPairs(RelationNet):
    """Bug: the query-major relation scores are read back class-major, so scores land on the wrong pairs."""

    def episode_logits(self, episode: Episode) -> Tensor:
        num_support = len(episode.support_images)
        features = self.backbone(torch.cat([episode.support_images, episode.query_images]))
        classes = class_sums(features[:num_support], episode.support_labels, episode.way)
        queries = features[num_support:]
        return self.relation(concatenate_pairs(classes, queries)).view(episode.way, len(queries)).T


class SiameseSignedDifference(Siamese):
    """Bug: the weighted distance of eq. 1 on the signed difference h1 - h2, not its absolute value."""

    def pair_logits(self, first: Tensor, second: Tensor) -> Tensor:
        return self.head(first - second).squeeze(-1)


METRIC = {
    "ProtoNet": (
        metric.protonet,
        {
            "distance not squared": ProtoNetEuclidean,
            "cosine in place of distance": ProtoNetCosine,
        },
    ),
    "MatchingNet": (
        metric.matchingnet,
        {
            "attention softmax over the queries": MatchingNetAttentionOverQueries,
            "normalised over the batch": MatchingNetNormalisedOverTheBatch,
            "probabilities as logits": MatchingNetProbabilitiesAsLogits,
        },
    ),
    "RelationNet": (metric.relationnet, {"relation scores read class-major": RelationNetShuffledPairs}),
    "Siamese": (metric.siamese, {"signed difference, no absolute value": SiameseSignedDifference}),
}


def with_broken_variants(seeds: list[int]) -> bool:
    """Broken variants run with seed 0: when seed 0 is among the seeds, or when no seed is (only the variants)."""
    return not seeds or 0 in seeds


def run_metric(methods: list[str], seeds: list[int], variants: list[str] | None = None, callbacks=()) -> None:
    omniglot = Omniglot(protocol="vinyals", download=False)
    omniglot.prepare()
    print("| method | variant | seed | untrained | trained | seconds |\n|---|---|---|---|---|---|")
    for name in methods:
        build, broken = METRIC[name]
        runs = [("correct", lambda: build(), seed) for seed in seeds]
        if with_broken_variants(seeds) and variants != []:
            runs += [(bug, lambda cls=cls: build(cls), 0) for bug, cls in broken.items() if bug in (variants or [bug])]
        for variant, make, seed in runs:
            started = time.perf_counter()
            result = metric.untrained_and_trained_accuracy(make, omniglot, seed=seed, callbacks=callbacks)
            seconds = time.perf_counter() - started
            print(
                f"| {name} | {variant} | {seed} | {result['untrained']:.3f} | {result['trained']:.3f} "
                f"| {seconds:.0f} |",
                flush=True,
            )


# ----- broken variants of the transfer family -------------------------------------------------------------------
class ShuffledLabels:
    """Bug (mixed into a Transfer method): pre-training labels misaligned with their images."""

    def pretraining_loss_and_logits(self, batch: LabelledBatch) -> tuple[Tensor, Tensor]:
        shuffled = batch.labels[torch.randperm(len(batch.labels), device=batch.labels.device)]
        return super().pretraining_loss_and_logits(LabelledBatch(batch.images, shuffled))


class BaselineShuffledLabels(ShuffledLabels, Baseline):
    pass


class BaselinePlusPlusShuffledLabels(ShuffledLabels, BaselinePlusPlus):
    pass


class BaselineUntrainedProbe(Baseline):
    """Bug: the episode's linear layer is never trained (learning rate 0): it scores with its random weights."""

    def default_episode_classifier(self) -> LinearProbe:
        return LinearProbe(lr=0.0)


class BaselinePlusPlusUntrainedProbe(BaselinePlusPlus):
    """Bug: the episode's cosine classifier is never trained (learning rate 0)."""

    def default_episode_classifier(self) -> CosineProbe:
        return CosineProbe(lr=0.0)


LINEAR = {"Baseline": Baseline, "RFS-simple": RFSSimple}
COSINE = {"Baseline++": BaselinePlusPlus}
#: pre-training, its evaluators, and the extra evaluators (broken probes) tested on the seed-0 backbone
TRANSFER = {
    "Baseline": (Baseline, LINEAR, {"Baseline, probe not trained": BaselineUntrainedProbe}),
    "Baseline++": (BaselinePlusPlus, COSINE, {"Baseline++, probe not trained": BaselinePlusPlusUntrainedProbe}),
}
SHUFFLED = {Baseline: BaselineShuffledLabels, BaselinePlusPlus: BaselinePlusPlusShuffledLabels}


def run_transfer(methods: list[str], seeds: list[int], variants: list[str] | None = None, callbacks=()) -> None:
    omniglot = Omniglot(protocol="vinyals", download=False)
    omniglot.prepare()
    print("| pre-training | variant | evaluated as | seed | untrained | trained | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in methods:
        pretraining, evaluators, broken_probes = TRANSFER[name]
        # the broken probes only evaluate the seed-0 backbone: no pre-training of their own
        broken = variants != []
        runs = [
            ("correct", pretraining, {**evaluators, **(broken_probes if seed == 0 and broken else {})}, seed)
            for seed in seeds
        ]
        if with_broken_variants(seeds) and broken:
            runs.append(("pre-training labels shuffled", SHUFFLED[pretraining], evaluators, 0))
        for variant, cls, evaluated_as, seed in runs:
            started = time.perf_counter()
            results = transfer.untrained_and_trained_accuracy(
                lambda cls=cls: transfer.transfer(cls), evaluated_as, omniglot, seed=seed, callbacks=callbacks
            )
            seconds = time.perf_counter() - started
            for evaluator, result in results.items():
                print(
                    f"| {name} | {variant} | {evaluator} | {seed} | {result['untrained']:.3f} "
                    f"| {result['trained']:.3f} | {seconds:.0f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=["metric", "transfer"])
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0, 1, 2],
        help="of the correct runs; the broken variants run (seed 0) when 0 is among them or none is",
    )
    parser.add_argument("--methods", nargs="+")
    parser.add_argument(
        "--variants",
        nargs="*",
        help="metric family: the broken variants to run (default all); with no name, none (both families)",
    )
    parser.add_argument(
        "--cpu-defaults",
        action="store_true",
        help="train and test with the CLI's speed settings (on CPUs with bf16 units: bf16 training, channels-last)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    callbacks = (SpeedSettings(),) if args.cpu_defaults else ()
    if args.family == "metric":
        run_metric(args.methods or list(METRIC), args.seeds, args.variants, callbacks)
    else:
        run_transfer(args.methods or list(TRANSFER), args.seeds, args.variants, callbacks)


if __name__ == "__main__":
    main()
