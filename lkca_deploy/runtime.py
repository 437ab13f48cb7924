"""The device runtime, as the toolkit has always offered it: `from lkca_deploy.runtime import Predictor`.

It lives in the lkca-deploy-runtime distribution (runtime/ in this repository, import package lkca_runtime), which
installs on a device without torch.
"""

from lkca_runtime.masks import Slide
from lkca_runtime.predictor import Predictor, choose_engine, predict

__all__ = ["Predictor", "Slide", "choose_engine", "predict"]
