"""Student/teacher zoo, models by name (torchvision:, timm:, package.module:Callable) and model files."""
from edgekd.models.adapt import BuiltModel, build_for_data, check_model_input, replace_head
from edgekd.models.checks import recipe_model_problems
from edgekd.models.io import load_model_file, load_shipped_teacher, load_weights, read_state_dict, save_model_file
from edgekd.models.names import import_path, resolve_model
from edgekd.models.zoo import MODELS, build_model, count_params

__all__ = ["MODELS", "BuiltModel", "build_for_data", "build_model", "check_model_input", "count_params",
           "import_path", "load_model_file", "load_shipped_teacher", "load_weights", "read_state_dict",
           "recipe_model_problems", "replace_head", "resolve_model", "save_model_file"]
