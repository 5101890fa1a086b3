"""Records what every method of tests/method_zoo.py computes on its real episode, with the code of the checkout
on PYTHONPATH: run once on the code before the fit_support / score split (main at 5db1624) to write
tests/recorded/method_outputs.pt, which tests/test_support_split.py compares the split code with.

    PYTHONPATH=<old checkout>:tests OMP_NUM_THREADS=1 python tests/recorded/record_method_outputs.py <output.pt>
"""

from __future__ import annotations

import sys

import torch

import method_zoo


def old_evaluation_logits(name, method, episode, class_names):
    """``episode_logits`` in eval mode; CLIP read the class names of ``predict`` from an attribute then."""
    method.eval()
    if name in method_zoo.RGB_METHODS:
        method._predict_class_names = class_names
    with torch.inference_mode():
        return method.episode_logits(episode).clone()


def main(output: str) -> None:
    torch.set_num_threads(1)
    episodes = method_zoo.load_episodes()
    recorded = {}
    for name in method_zoo.BUILDERS:
        episode, class_names = method_zoo.episode_of(name, episodes)
        method = method_zoo.build(name)
        outputs = {"eval_logits": old_evaluation_logits(name, method, episode, class_names)}
        outputs.update(method_zoo.training_outputs(name, method, episode))
        recorded[name] = outputs
        print(name, {key: tuple(value.shape) for key, value in outputs.items()})
    torch.save(recorded, output)


if __name__ == "__main__":
    main(sys.argv[1])
