"""SimpleShot, BD-CSPN, TIM, LaplacianShot and PT-MAP side by side with easyfsl 1.5's implementations, on the same
frozen features of the same 1000 test episodes.

    python benchmarks/transductive_reference.py setup                  # once: the peer venv with easyfsl 1.5
    python benchmarks/transductive_reference.py backbone --steps 200   # Conv4 from a short ProtoNet fit on Omniglot
    python benchmarks/transductive_reference.py features --shot 1      # records the test episodes' features
    python benchmarks/transductive_reference.py ours --shot 1          # our classifiers, through the test loop
    benchmarks/.peers-venv/bin/python benchmarks/transductive_reference.py easyfsl --shot 1
    python benchmarks/transductive_reference.py compare --shot 1       # the table (mean, 95% CI, paired difference)
    python benchmarks/transductive_reference.py diagnose --shot 1      # ours with easyfsl's departures swapped in
    python benchmarks/transductive_reference.py all --shot 1           # every step after `backbone`

The backbone is the project's Conv4 trained by ``experiments/omniglot/protonet_5w1s.yaml`` for ``--steps`` episodes
of 20-way 1-shot (64-dimensional features, non-negative after the last ReLU: PT-MAP's power transform applies).
``features`` runs ``FrozenFeatures`` with that backbone through the project's test loop on its 1000 fixed test
episodes (5-way, ``--shot``, 15 queries, ``eval_seed`` 0) and saves each episode's support and query features and
labels and the mean feature of the training split (the base classes) to ``<out>/episodes-<shot>shot.pt``.
``ours`` evaluates each of this project's classifiers through the same test loop (``FrozenFeatures`` with that
``episode_classifier``), per episode; ``easyfsl`` feeds the saved tensors to easyfsl's classes (backbone
``nn.Identity``, so they see exactly the features ours saw), per episode. easyfsl is never a project dependency:
``setup`` installs it into ``benchmarks/.peers-venv`` (``protonet_reference.py``'s peer venv).

Both sides get the same hyper-parameters, the papers' where easyfsl exposes them (see ``METHODS``); what easyfsl
does not expose is where the two implementations differ, and ``compare`` says whether the accuracies agree within
the confidence interval of their paired difference.

Cost, one thread (2026-12-02, 2 shared cores at load 4-7): SimpleShot, BD-CSPN and LaplacianShot take seconds per
1000 episodes; PT-MAP 0.2-0.35 s per episode here (21 Sinkhorn solves, each iterated until the row sums move by
less than 1e-6, the authors' tolerance: hundreds of iterations of about ten small operations), 0.6 s with easyfsl
(not profiled); TIM-GD about 1.2 s here, 0.9 s with easyfsl (1000 Adam steps of some 230 small operations each,
of which the single-tensor Adam step is a third). ``--limit`` cuts both sides to the first episodes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "omniglot" / "protonet_5w1s.yaml"
PEERS_PYTHON = REPO / "benchmarks" / ".peers-venv" / "bin" / "python"
WAY, QUERY, EPISODES = 5, 15, int(os.environ.get("REFERENCE_TEST_EPISODES", 1000))

#: name -> (our classifier's class and arguments, easyfsl's class and arguments). Shared settings: CL2N is
#: easyfsl's ``feature_centering=<base mean>, feature_normalization=2``; L2N its ``feature_normalization=2``.
METHODS = {
    "SimpleShot": (("SimpleShot", {"feature_transform": "CL2N"}), ("SimpleShot", {"cl2n": True})),
    "BD-CSPN": (("BDCSPN", {"feature_transform": "L2N"}), ("BDCSPN", {"l2n": True})),
    "TIM-GD": (
        (
            "TIM",
            {
                "feature_transform": "L2N",
                "temperature": 15.0,
                "cross_entropy_weight": 0.1,
                "marginal_entropy_weight": 1.0,
                "conditional_entropy_weight": 0.1,
                "steps": 1000,
                "lr": 1e-4,
            },
        ),
        (
            "TIM",
            {
                "l2n": True,
                "temperature": 15.0,
                "cross_entropy_weight": 0.1,
                "marginal_entropy_weight": 1.0,
                "conditional_entropy_weight": 0.1,
                "fine_tuning_steps": 1000,
                "fine_tuning_lr": 1e-4,
            },
        ),
    ),
    "LaplacianShot": (
        ("LaplacianShot", {"feature_transform": "CL2N", "laplacian_weight": 1.0, "knn": 3, "iterations": 20}),
        ("LaplacianShot", {"cl2n": True, "lambda_regularization": 1.0, "knn": 3, "inference_steps": 20}),
    ),
    "PT-MAP": (
        ("PTMAP", {"power": 0.5, "sinkhorn_regularisation": 10.0, "alpha": 0.2, "iterations": 20}),
        ("PTMAP", {"power_factor": 0.5, "lambda_regularization": 10.0, "fine_tuning_lr": 0.2, "fine_tuning_steps": 20}),
    ),
}


def episodes_file(out: Path, shot: int) -> Path:
    return out / f"episodes-{shot}shot.pt"


# ----- the backbone ---------------------------------------------------------------------------------------------------
def fit_backbone(steps: int, seed: int, out: Path) -> None:
    from fsl_lightning.cli import main
    from reference_results import save_result

    arguments = [
        "fit",
        "--config",
        str(CONFIG.relative_to(REPO)),
        f"--trainer.max_steps={steps}",
        "--data.train.way=20",
        f"--seed_everything={seed}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--test_after_fit=false",
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.enable_progress_bar=false",
    ]
    started = time.perf_counter()
    cli = main(arguments)
    command = "python -m fsl_lightning " + " ".join(arguments)
    save_result(out, "backbone", cli.model.backbone.state_dict(), time.perf_counter() - started, command)


def frozen_conv4(out: Path) -> torch.nn.Module:
    from fsl_lightning.backbones import Conv4

    backbone = Conv4(in_channels=1)
    backbone.load_state_dict(torch.load(out / "backbone.pt", weights_only=True))
    return backbone


def test_run(classifier, out: Path, shot: int):
    """FrozenFeatures(backbone, classifier) through the project's test loop on the fixed test episodes; returns the
    per-episode accuracies (in episode order) and the seconds taken."""
    import lightning as L

    from fsl_lightning.data import EpisodicDataModule, Omniglot
    from fsl_lightning.episode import EpisodeSpec
    from fsl_lightning.methods import FrozenFeatures

    datamodule = EpisodicDataModule(
        Omniglot(protocol="vinyals", download=False), evaluation=EpisodeSpec(WAY, shot, QUERY), test_episodes=EPISODES
    )
    model = FrozenFeatures(
        frozen_conv4(out), episode_classifier=classifier, feature_cache_dir=str(out / "feature_cache")
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    started = time.perf_counter()
    trainer.test(model, datamodule, verbose=False)
    return model.last_accuracy["test"].per_episode.cpu(), time.perf_counter() - started


# ----- recording the episodes -----------------------------------------------------------------------------------------
def episode_recorder():
    """An episode classifier that keeps what it is given (and scores by cosine to prototypes, to check the record).
    It fits with the queries (``fit_predict``), so the test loop hands it each episode's support and queries at
    once, as it hands them to the transductive classifiers."""
    from fsl_lightning.methods.episode_classifiers import EpisodeClassifier, NearestCentroid

    class EpisodeRecorder(EpisodeClassifier):
        needs_base_features = True

        def __init__(self) -> None:
            self.scorer, self.episodes, self.base_mean = NearestCentroid(), [], None

        def prepare(self, base_features: torch.Tensor) -> None:
            self.base_mean = base_features.double().mean(dim=0).float().cpu()

        def fit_predict(self, support, support_labels, queries, way, generator):
            self.episodes.append(
                (
                    support.detach().float().cpu().clone(),
                    support_labels.cpu().clone(),
                    queries.detach().float().cpu().clone(),
                )
            )
            return self.scorer(support, support_labels, queries, way)

    return EpisodeRecorder()


def record_features(out: Path, shot: int) -> None:
    recorder = episode_recorder()
    per_episode, _ = test_run(recorder, out, shot)
    support, support_labels, queries = (torch.stack(parts) for parts in zip(*recorder.episodes))
    # the data module lays each episode's queries out class by class (episode.split_support_query)
    query_labels = torch.arange(WAY).repeat_interleave(QUERY).expand(len(queries), -1).clone()
    check = cosine_accuracy(support, support_labels, queries, query_labels)
    assert torch.allclose(check, per_episode), "the recorded episodes do not reproduce the test loop's accuracies"
    torch.save(
        {
            "support": support,
            "support_labels": support_labels,
            "queries": queries,
            "query_labels": query_labels,
            "base_mean": recorder.base_mean,
        },
        episodes_file(out, shot),
    )
    print(f"recorded {len(support)} episodes ({shot}-shot, {support.shape[-1]} features) to {episodes_file(out, shot)}")
    # our SimpleShot (CL2N) through the test loop, base-class mean included, against it on the record
    in_loop, _ = test_run(our_classifier("SimpleShot", recorder.base_mean), out, shot)
    classifier = our_classifier("SimpleShot", recorder.base_mean)
    on_record = torch.tensor(
        [
            (classifier(s, sl, q, WAY).argmax(-1) == ql).float().mean().item()
            for s, sl, q, ql in zip(support, support_labels, queries, query_labels)
        ]
    )
    assert torch.allclose(in_loop, on_record), "SimpleShot scores the record differently from the test loop"
    print(f"SimpleShot through the test loop = on the record: {mean_ci(in_loop)}")


def cosine_accuracy(support, support_labels, queries, query_labels) -> torch.Tensor:
    from fsl_lightning.methods.episode_classifiers import NearestCentroid

    scorer = NearestCentroid()
    return torch.tensor(
        [
            (scorer(s, sl, q, WAY).argmax(-1) == ql).float().mean().item()
            for s, sl, q, ql in zip(support, support_labels, queries, query_labels)
        ]
    )


# ----- both sides -----------------------------------------------------------------------------------------------------
def recorded(out: Path, shot: int, limit: int | None) -> tuple[dict, list[tuple[torch.Tensor, ...]]]:
    """The recorded data and its first ``limit`` episodes as (support, support labels, queries, query labels)."""
    data = torch.load(episodes_file(out, shot), weights_only=True)
    episodes = list(zip(data["support"], data["support_labels"], data["queries"], data["query_labels"]))
    return data, episodes[:limit]


def our_classifier(name: str, base_mean: torch.Tensor):
    from fsl_lightning.methods import feature_classifiers

    (class_name, arguments), _ = METHODS[name]
    classifier = getattr(feature_classifiers, class_name)(**arguments)
    if getattr(classifier, "needs_base_features", False):
        classifier.prepare(base_mean.unsqueeze(0))  # the mean of the recorded training-split features
    return classifier


def score_ours(out: Path, shot: int, methods: list[str], limit: int | None) -> None:
    """Our classifiers called on the recorded episodes, as FrozenFeatures.episode_logits calls them in the test loop
    (``record_features`` checks, with SimpleShot, that both give the same per-episode accuracies)."""
    data, episodes = recorded(out, shot, limit)
    for name in methods:
        classifier, started = our_classifier(name, data["base_mean"]), time.perf_counter()
        per_episode = torch.tensor(
            [
                (classifier(s, sl, q, WAY, seed=index).argmax(-1) == ql).float().mean().item()
                for index, (s, sl, q, ql) in enumerate(episodes)
            ]
        )
        seconds = time.perf_counter() - started
        add_result(out / f"ours-{shot}shot.pt", name, per_episode, seconds)
        print(f"ours {name}: {mean_ci(per_episode)} ({seconds:.0f} s)", flush=True)


def score_easyfsl(out: Path, shot: int, methods: list[str], limit: int | None) -> None:
    """Runs in the peer venv: easyfsl's classes on the recorded features (backbone nn.Identity)."""
    import easyfsl.methods

    data, episodes = recorded(out, shot, limit)
    for name in methods:
        _, (class_name, arguments) = METHODS[name]
        model = easyfsl_model(getattr(easyfsl.methods, class_name), arguments, data["base_mean"])
        started, per_episode = time.perf_counter(), []
        for support, support_labels, queries, query_labels in episodes:
            model.process_support_set(support, support_labels)
            per_episode.append((model(queries).argmax(-1) == query_labels).float().mean().item())
        seconds = time.perf_counter() - started
        add_result(out / f"easyfsl-{shot}shot.pt", name, torch.tensor(per_episode), seconds)
        print(f"easyfsl {name}: {mean_ci(torch.tensor(per_episode))} ({seconds:.0f} s)", flush=True)


def add_result(path: Path, name: str, per_episode: torch.Tensor, seconds: float) -> None:
    """Adds one method's per-episode accuracies to ``path``, read again just before (runs of other methods may
    write it meanwhile)."""
    results = torch.load(path, weights_only=True) if path.exists() else {}
    results[name] = {"per_episode": per_episode, "seconds": seconds}
    torch.save(results, path)


def easyfsl_model(method, arguments: dict, base_mean: torch.Tensor):
    """easyfsl's ``method`` with our feature transform expressed in its own terms (centring, p-norm)."""
    arguments = dict(arguments)
    transform = {}
    if arguments.pop("cl2n", False):
        transform = {"feature_centering": base_mean, "feature_normalization": 2}
    elif arguments.pop("l2n", False):
        transform = {"feature_normalization": 2}
    return method(**arguments, **transform)


# ----- the table ------------------------------------------------------------------------------------------------------
def mean_ci(values: torch.Tensor) -> str:
    values = values.double()
    return f"{100 * values.mean():.2f} ± {100 * 1.96 * values.std() / math.sqrt(len(values)):.2f}"


def compare(out: Path, shot: int) -> None:
    ours = torch.load(out / f"ours-{shot}shot.pt", weights_only=True)
    theirs = torch.load(out / f"easyfsl-{shot}shot.pt", weights_only=True)
    print(
        f"\n5-way {shot}-shot, accuracy % (95% CI) over the recorded test episodes; backbone: "
        f"{json.loads((out / 'backbone.json').read_text())['command']}\n"
    )
    print(
        "| method | episodes | this project | easyfsl 1.5 | paired difference (ours − easyfsl) | within the CI | "
        "time, ours / easyfsl |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in METHODS:
        if name not in ours or name not in theirs:
            continue
        a, b = ours[name]["per_episode"], theirs[name]["per_episode"]
        a, b = a[: min(len(a), len(b))], b[: min(len(a), len(b))]
        difference = (a - b).double()
        half_width = 1.96 * difference.std() / math.sqrt(len(difference))
        agrees = "yes" if abs(difference.mean()) <= half_width or difference.abs().max() == 0 else "**no**"
        print(
            f"| {name} | {len(a)} | {mean_ci(a)} | {mean_ci(b)} | {mean_ci(difference)} | {agrees} | "
            f"{ours[name]['seconds']:.0f} s / {theirs[name]['seconds']:.0f} s |"
        )


# ----- where the two differ -------------------------------------------------------------------------------------------
def easyfsl_maths_variants() -> list[tuple[str, str, object]]:
    """Our classifiers with easyfsl 1.5's departures swapped in (subclasses here and nowhere else), as (method,
    change, classifier): if the one with all of a method's departures reproduces easyfsl's per-episode accuracies,
    those departures are the whole difference; the ones with a single departure say how much each accounts for."""
    from fsl_lightning.methods import feature_classifiers as ours
    from fsl_lightning.methods.feature_classifiers import bd_cspn, laplacianshot
    from fsl_lightning.methods.functional import class_prototypes, cosine_similarity_matrix, squared_euclidean_distance

    class CosineSimpleShot(ours.SimpleShot):
        """easyfsl: cosine to the centroids, not Euclidean distance."""

        def fit_predict(self, support, support_labels, queries, way, generator):
            centroids = class_prototypes(self.transform(support), support_labels, way)
            return cosine_similarity_matrix(self.transform(queries), centroids)

    class UnshiftedScoringBDCSPN(ours.BDCSPN):
        """easyfsl: the unshifted queries scored (eps is the ``temperature`` given)."""

        def fit_predict(self, support, support_labels, queries, way, generator):
            support, queries = self.transform(support), self.transform(queries)
            shifted = bd_cspn.shift_queries(support, queries)
            prototypes = bd_cspn.rectified_prototypes(support, support_labels, shifted, way, self.temperature)
            return cosine_similarity_matrix(queries, prototypes)

    class CosineTIM(ours.TIM):
        """easyfsl: ``temperature * cos(z, w)`` logits, not ``-tau/2 ||z - w||^2``."""

        def logits(self, weights, features):
            return self.temperature * cosine_similarity_matrix(features, weights)

    class LaplacianShotVariant(ours.LaplacianShot):
        """easyfsl's choices, each on request: BD-CSPN's rectification (weights ``exp(eps cos)`` normalised within
        each class, eps = ``rectification_temperature``) and the unshifted queries scored."""

        def __init__(self, bdcspn_rectification: bool, score_unshifted: bool, **arguments) -> None:
            super().__init__(**arguments)
            self.bdcspn_rectification, self.score_unshifted = bdcspn_rectification, score_unshifted

        def fit_predict(self, support, support_labels, queries, way, generator):
            support, queries = self.transform(support), self.transform(queries)
            shifted = bd_cspn.shift_queries(support, queries)
            rectify = bd_cspn.rectified_prototypes if self.bdcspn_rectification else laplacianshot.rectified_prototypes
            prototypes = rectify(support, support_labels, shifted, way, self.rectification_temperature)
            scored = queries if self.score_unshifted else shifted
            unary = squared_euclidean_distance(scored, prototypes)
            return laplacianshot.bound_updates(
                unary, laplacianshot.knn_affinity(scored, self.knn), self.laplacian_weight, self.iterations
            )

    class EasyfslPreprocessingPTMAP(ours.PTMAP):
        """easyfsl: ``(relu(x) + 1e-6)^beta`` only: no L2 normalisation, no centring of each set."""

        def preprocess(self, features):
            return (features.relu() + 1e-6).pow(self.power)

    (_, simpleshot), _ = METHODS["SimpleShot"]
    (_, bdcspn), _ = METHODS["BD-CSPN"]
    (_, tim), _ = METHODS["TIM-GD"]
    (_, laplacian), _ = METHODS["LaplacianShot"]
    (_, ptmap), _ = METHODS["PT-MAP"]
    eps_1 = {**laplacian, "rectification_temperature": 1.0}
    return [
        ("SimpleShot", "cosine to the centroids", CosineSimpleShot(**simpleshot)),
        ("BD-CSPN", "eps = 1, unshifted queries scored", UnshiftedScoringBDCSPN(**{**bdcspn, "temperature": 1.0})),
        ("BD-CSPN", "eps = 1 only", ours.BDCSPN(**{**bdcspn, "temperature": 1.0})),
        ("BD-CSPN", "unshifted queries scored only", UnshiftedScoringBDCSPN(**bdcspn)),
        ("TIM-GD", "cosine logits", CosineTIM(**tim)),
        (
            "LaplacianShot",
            "BD-CSPN's rectification (eps = 1), unshifted queries scored",
            LaplacianShotVariant(True, True, **eps_1),
        ),
        ("LaplacianShot", "BD-CSPN's rectification (eps = 1) only", LaplacianShotVariant(True, False, **eps_1)),
        ("LaplacianShot", "unshifted queries scored only", LaplacianShotVariant(False, True, **laplacian)),
        ("PT-MAP", "power transform only", EasyfslPreprocessingPTMAP(**ptmap)),
    ]


def diagnose(out: Path, shot: int, methods: list[str], limit: int | None) -> None:
    """Each variant of :func:`easyfsl_maths_variants` on the recorded episodes, against easyfsl's accuracies."""
    data, episodes = recorded(out, shot, limit)
    theirs = torch.load(out / f"easyfsl-{shot}shot.pt", weights_only=True)
    print(f"\n5-way {shot}-shot: this project's classifiers with easyfsl 1.5's departures swapped in\n")
    print("| method | swapped in | ours, so changed | easyfsl 1.5 | paired difference | episodes that differ |")
    print("|---|---|---|---|---|---|")
    for name, change, classifier in easyfsl_maths_variants():
        if name not in methods:
            continue
        if getattr(classifier, "needs_base_features", False):
            classifier.prepare(data["base_mean"].unsqueeze(0))
        per_episode = torch.tensor(
            [(classifier(s, sl, q, WAY).argmax(-1) == ql).float().mean().item() for s, sl, q, ql in episodes]
        )
        reference = theirs[name]["per_episode"][: len(per_episode)]
        differing = int((per_episode != reference).sum())
        print(
            f"| {name} | {change} | {mean_ci(per_episode)} | {mean_ci(reference)} | "
            f"{mean_ci(per_episode - reference)} | {differing} of {len(per_episode)} |",
            flush=True,
        )


def run_easyfsl_in_peer_venv(out: Path, shot: int, methods: list[str], limit: int | None) -> None:
    if not PEERS_PYTHON.exists():
        raise SystemExit(f"{PEERS_PYTHON} is missing: run `python {Path(__file__).name} setup` first.")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    subprocess.run(
        [
            str(PEERS_PYTHON),
            __file__,
            "easyfsl",
            "--shot",
            str(shot),
            "--out",
            str(out),
            "--methods",
            *methods,
            *(["--limit", str(limit)] if limit else []),
        ],
        check=True,
        env=environment,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = ("setup", "backbone", "features", "ours", "easyfsl", "compare", "diagnose", "all")
    parser.add_argument("command", choices=commands)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "transductive_reference")
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200, help="ProtoNet training episodes of the backbone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--limit", type=int, help="score only the first LIMIT recorded episodes (both sides)")
    args = parser.parse_args()
    if args.command == "setup":
        from peers_venv import setup_peers

        setup_peers()
    elif args.command == "backbone":
        fit_backbone(args.steps, args.seed, args.out)
    elif args.command == "features":
        record_features(args.out, args.shot)
    elif args.command == "ours":
        score_ours(args.out, args.shot, args.methods, args.limit)
    elif args.command == "easyfsl":
        score_easyfsl(args.out, args.shot, args.methods, args.limit)
    elif args.command == "compare":
        compare(args.out, args.shot)
    elif args.command == "diagnose":
        diagnose(args.out, args.shot, args.methods, args.limit)
    else:
        record_features(args.out, args.shot)
        score_ours(args.out, args.shot, args.methods, args.limit)
        run_easyfsl_in_peer_venv(args.out, args.shot, args.methods, args.limit)
        compare(args.out, args.shot)
        diagnose(args.out, args.shot, args.methods, args.limit)
