"""Few-shot methods, one per module, each a LightningModule over :class:`FewShotMethod`."""

from fsl_lightning.methods.base import FewShotMethod
from fsl_lightning.methods.matchingnet import MatchingNet
from fsl_lightning.methods.nearest_neighbour import NearestNeighbour
from fsl_lightning.methods.protonet import ProtoNet
from fsl_lightning.methods.relationnet import RelationNet
from fsl_lightning.methods.siamese import Siamese

#: name -> class, for error messages and programmatic use; the CLI also takes full class paths
METHODS: dict[str, type[FewShotMethod]] = {
    "ProtoNet": ProtoNet,
    "MatchingNet": MatchingNet,
    "RelationNet": RelationNet,
    "Siamese": Siamese,
    "NearestNeighbour": NearestNeighbour,
}

__all__ = ["METHODS", "FewShotMethod", "MatchingNet", "NearestNeighbour", "ProtoNet", "RelationNet", "Siamese"]
