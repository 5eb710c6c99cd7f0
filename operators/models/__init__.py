"""The model zoo: offline models with their original checkpoint layouts and their continual forms.

`operators.models.zoo` maps names (`x3d_s`, `cox3d_s`, ...) to builders; `load_weights` reads
checkpoints as users have them. Model modules are imported on use (`operators.models.x3d`, ...).
"""
from operators.models.weights import WeightsError, load_weights, read_state_dict
from operators.models.zoo import ZooEntry, build_model, get_entry, model_names, register_model

__all__ = [
    "WeightsError",
    "ZooEntry",
    "build_model",
    "get_entry",
    "load_weights",
    "model_names",
    "read_state_dict",
    "register_model",
]
