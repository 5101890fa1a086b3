"""What pretrained foundation models share: fetching their weights from the official hubs (with errors that say how
to provide them offline) and turning the data module's images into the input each model was trained on."""

from fsl_lightning.pretrained.hub import download_from_hugging_face, download_from_url, hugging_face_cache_folder
from fsl_lightning.pretrained.preprocess import ModelInput

__all__ = ["ModelInput", "download_from_hugging_face", "download_from_url", "hugging_face_cache_folder"]
