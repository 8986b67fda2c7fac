"""Student/teacher zoo and loading of user models."""
from edgekd.models.io import load_model_file, load_shipped_teacher, save_model_file
from edgekd.models.zoo import MODELS, build_model, count_params

__all__ = ["MODELS", "build_model", "count_params", "load_model_file", "load_shipped_teacher", "save_model_file"]
