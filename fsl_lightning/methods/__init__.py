"""Few-shot methods, one per module, each a LightningModule over :class:`FewShotMethod`."""

from fsl_lightning.methods.anil import ANIL
from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.maml import FOMAML, MAML
from fsl_lightning.methods.matchingnet import MatchingNet
from fsl_lightning.methods.metasgd import MetaSGD
from fsl_lightning.methods.nearest_neighbour import NearestNeighbour
from fsl_lightning.methods.protonet import ProtoNet
from fsl_lightning.methods.relationnet import RelationNet
from fsl_lightning.methods.reptile import Reptile
from fsl_lightning.methods.siamese import Siamese

#: name -> class, for error messages and programmatic use; the CLI also takes full class paths
METHODS: dict[str, type[FewShotMethod]] = {
    "ProtoNet": ProtoNet,
    "MatchingNet": MatchingNet,
    "RelationNet": RelationNet,
    "Siamese": Siamese,
    "NearestNeighbour": NearestNeighbour,
    "MAML": MAML,
    "FOMAML": FOMAML,
    "MetaSGD": MetaSGD,
    "ANIL": ANIL,
    "Reptile": Reptile,
}

__all__ = [
    "ANIL", "FOMAML", "MAML", "METHODS", "FewShotMethod", "MatchingNet", "MetaSGD", "NearestNeighbour", "ProtoNet",
    "RelationNet", "Reptile", "Siamese",
]
