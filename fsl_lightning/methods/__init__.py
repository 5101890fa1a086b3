"""Few-shot methods, one per module, each a LightningModule over :class:`FewShotMethod`, registered in
:data:`METHODS` by its ``@registered`` decorator (name -> class, for the CLI, its error messages and the tests).
Importing a method module registers its methods; this package imports them all."""

from fsl_lightning.methods.anil import ANIL
from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.baseline import Baseline
from fsl_lightning.methods.baseline_pp import BaselinePlusPlus
from fsl_lightning.methods.clip import CLIPFewShot, CLIPZeroShot
from fsl_lightning.methods.dn4 import DN4
from fsl_lightning.methods.feat import FEAT
from fsl_lightning.methods.frozen_features import FrozenFeatures
from fsl_lightning.methods.maml import FOMAML, MAML
from fsl_lightning.methods.matchingnet import MatchingNet
from fsl_lightning.methods.meta_baseline import ClassifierBaseline, MetaBaseline
from fsl_lightning.methods.metaoptnet import MetaOptNet
from fsl_lightning.methods.metasgd import MetaSGD
from fsl_lightning.methods.nearest_neighbour import NearestNeighbour
from fsl_lightning.methods.protonet import ProtoNet
from fsl_lightning.methods.r2d2 import R2D2
from fsl_lightning.methods.registry import METHODS
from fsl_lightning.methods.relationnet import RelationNet
from fsl_lightning.methods.reptile import Reptile
from fsl_lightning.methods.rfs import RFSSimple
from fsl_lightning.methods.rfs_distill import RFSDistill
from fsl_lightning.methods.siamese import Siamese
from fsl_lightning.methods.skd import SKD
from fsl_lightning.methods.transfer import Transfer

__all__ = [
    "ANIL",
    "Baseline",
    "BaselinePlusPlus",
    "ClassifierBaseline",
    "CLIPFewShot",
    "CLIPZeroShot",
    "DN4",
    "FEAT",
    "FewShotMethod",
    "FOMAML",
    "FrozenFeatures",
    "MAML",
    "MatchingNet",
    "MetaBaseline",
    "MetaOptNet",
    "MetaSGD",
    "METHODS",
    "NearestNeighbour",
    "ProtoNet",
    "R2D2",
    "RelationNet",
    "Reptile",
    "RFSDistill",
    "RFSSimple",
    "Siamese",
    "SKD",
    "Transfer",
]
