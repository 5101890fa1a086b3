"""Episode classifiers on pretrained features from the few-shot literature, one per module.

SimpleShot (nearest centroid on centred, L2-normalised features) and the transductive BD-CSPN, TIM, LaplacianShot
and PT-MAP, which use all the queries of an episode together: their accuracies assume that the queries of an
episode arrive together (as in the test loop), not one at a time. Each is an
:class:`~fsl_lightning.methods.episode_classifiers.EpisodeClassifier`, chosen in config by class path for
FrozenFeatures or Transfer (and the methods built on it), e.g.
``episode_classifier: {class_path: fsl_lightning.methods.feature_classifiers.SimpleShot}``.
"""

from fsl_lightning.methods.feature_classifiers.bd_cspn import BDCSPN
from fsl_lightning.methods.feature_classifiers.laplacianshot import LaplacianShot
from fsl_lightning.methods.feature_classifiers.pt_map import PTMAP
from fsl_lightning.methods.feature_classifiers.simpleshot import SimpleShot
from fsl_lightning.methods.feature_classifiers.tim import TIM

__all__ = ["BDCSPN", "LaplacianShot", "PTMAP", "SimpleShot", "TIM"]
