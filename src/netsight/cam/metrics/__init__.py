"""How faithful and how well placed class activation maps are, over a dataset.

:func:`evaluate` runs one or several CAM methods over batches of images and scores
each map four ways (five with ``road=True``), next to two maps that know nothing (a
seeded random map and a centred Gaussian):

* **Deletion and insertion AUC** (RISE, Petsiuk et al. 2018). Pixels are taken in
  the order of the map's saliency (most salient first, ties in row-major order) in
  ``steps`` equal steps. Deletion replaces them with a baseline (zeros, or the
  blurred image) and follows the target class's softmax probability as it falls;
  insertion starts from the blurred (or zero) image and puts the original pixels
  back. The area under each curve is a trapezoid over the fraction of pixels, so it
  lies in ``[0, 1]``: a faithful map gives a low deletion and a high insertion AUC.
* **Pointing game** (Zhang et al. 2016): whether the map's maximum (the first one
  in row-major order) falls inside the ground-truth box or mask, up to a pixel
  ``tolerance``.
* **Average drop and increase in confidence** (Chattopadhay et al. 2018, Grad-CAM++):
  the target probability on ``image * map`` (the map min-max scaled to ``[0, 1]``)
  against the probability on the image; average drop is the mean of
  ``max(0, p - p_masked) / p``, increase the share of images with
  ``p_masked > p``.
* **ROAD** (RemOve And Debias, Rong et al. 2022), with ``road=True``: the most
  (MoRF) or least (LeRF) salient pixels, at several percentages, are replaced by a
  noisy linear imputation from their neighbours (:func:`impute`, batched in torch;
  pytorch-grad-cam solves one image at a time with scipy) rather than a constant,
  whose edges would tell the model where the map pointed; the target probability
  is averaged over the percentages: low for MoRF and high for LeRF is faithful.

Every perturbed image is made in chunks of ``chunk_size`` and run under
``torch.inference_mode()``, so memory is bounded by the chunk; the curve ends that
do not depend on the map (the image, the fully deleted image, the blurred start)
are computed once per batch and shared by all methods.

With ``torch.distributed`` initialised every rank scores its own part of the data
and the sums and counts are all-reduced, so every rank returns the totals of one
process on the whole dataset (see :func:`evaluate` for how the data is split).
"""

from __future__ import annotations

from netsight.cam.metrics.evaluation import BASELINES, evaluate
from netsight.cam.metrics.results import CAMEvaluation, MethodScores
from netsight.cam.metrics.results import render_table as render_table
from netsight.cam.metrics.road import ROAD_PERCENTAGES, impute

__all__ = ["BASELINES", "ROAD_PERCENTAGES", "CAMEvaluation", "MethodScores", "evaluate", "impute"]
