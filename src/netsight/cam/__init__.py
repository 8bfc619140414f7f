"""Class activation maps: where in the input a network finds evidence for a class.

Example:
    >>> cam = netsight.cam.GradCAM(model)        # target layer found automatically
    >>> maps = cam(x)                            # (B, H, W) in [0, 1], top-1 class each
    >>> result = cam.explain(x, targets=[3, 5])  # maps, raw maps, logits, classes, layers
    >>> netsight.cam.overlay(image, maps[0], alpha=0.5)   # a PIL image
    >>> print(netsight.cam.evaluate(cam, loader))        # deletion, insertion, pointing
    >>> netsight.cam.compare(model, x, "all").save("out/cam")   # every method, side by side

Every method shares one base class (:class:`BaseCAM`) and one verb; :data:`METHODS`
maps registry names to the classes.
"""

from __future__ import annotations

from netsight.cam import targets
from netsight.cam.base import BaseCAM, CAMResult, CAMWarning, Targets
from netsight.cam.compare import CAMComparison, compare
from netsight.cam.factor import (
    FEM,
    KPCACAM,
    SESS,
    Factorization,
    SegEigenCAM,
    deep_feature_factorization,
)
from netsight.cam.fullgrad import FullGrad, FullGradients
from netsight.cam.gradient import (
    EigenGradCAM,
    FinerCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GradientCAM,
    HiResCAM,
    LayerCAM,
    Saliency,
    ShapleyCAM,
    SmoothGradCAMpp,
    XGradCAM,
)
from netsight.cam.guided import GuidedBackprop, GuidedGradCAM
from netsight.cam.layout import LayerLayout, Layout, LayoutError, layer_layout
from netsight.cam.metrics import CAMEvaluation, MethodScores, evaluate
from netsight.cam.other import CAM, EigenCAM
from netsight.cam.overlay import overlay
from netsight.cam.perturbation import ISCAM, SSCAM, AblationCAM, ScoreCAM

__all__ = [
    "CAM",
    "FEM",
    "ISCAM",
    "KPCACAM",
    "METHODS",
    "SESS",
    "SSCAM",
    "AblationCAM",
    "BaseCAM",
    "CAMComparison",
    "CAMEvaluation",
    "CAMResult",
    "CAMWarning",
    "EigenCAM",
    "EigenGradCAM",
    "Factorization",
    "FinerCAM",
    "FullGrad",
    "FullGradients",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GradientCAM",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "LayerLayout",
    "Layout",
    "LayoutError",
    "MethodScores",
    "Saliency",
    "ScoreCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "SmoothGradCAMpp",
    "Targets",
    "XGradCAM",
    "compare",
    "deep_feature_factorization",
    "evaluate",
    "layer_layout",
    "overlay",
    "targets",
]

#: Registry name -> method class (read by the command line).
METHODS: dict[str, type[BaseCAM]] = {
    "cam": CAM,
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
    "sscam": SSCAM,
    "iscam": ISCAM,
    "smoothgradcam++": SmoothGradCAMpp,
    "ablationcam": AblationCAM,
    "eigencam": EigenCAM,
    "saliency": Saliency,
    "eigengradcam": EigenGradCAM,
    "gradcamelementwise": GradCAMElementWise,
    "shapleycam": ShapleyCAM,
    "finercam": FinerCAM,
    "fullgrad": FullGrad,
    "guidedbackprop": GuidedBackprop,
    "guidedgradcam": GuidedGradCAM,
    "kpcacam": KPCACAM,
    "fem": FEM,
    "segeigencam": SegEigenCAM,
    "sess": SESS,
}
