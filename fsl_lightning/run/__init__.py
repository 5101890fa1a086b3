"""The plumbing of a run, behind the command line (``fsl_lightning/cli.py``) and ``FewShotClassifier``: composed
config files, checkpoint names, atomic writes, the evaluation settings a checkpoint keeps, one-line
user errors, quiet library output, the CPU's features and allocator settings, W&B's offline fallback."""
