"""One network for every size: :func:`torchinn.make_elastic` trains a pretrained network so that
every size from ``low`` to full works (:mod:`.train`), and :class:`ElasticNetwork` deploys any
size of it, by ratio, sizes or budget (:mod:`.network`).
"""

from .network import DeployedSize, ElasticNetwork, SweepPoint
from .report import ElasticReport
from .scaled import ScaledPartition
from .sizes import DeployedSizes, NestedSizes
from .train import make_elastic

__all__ = ["DeployedSize", "DeployedSizes", "ElasticNetwork", "ElasticReport", "NestedSizes", "ScaledPartition", "SweepPoint",
           "make_elastic"]
