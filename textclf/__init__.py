"""textclf: the model code shared by training (train/) and serving (handlers/), shipped inside every .mar."""
from .config import ModelConfig, load_labels, save_labels
from .errors import CheckpointError, DataError, InputError
from .predict import Predictor

__all__ = ["ModelConfig", "load_labels", "save_labels", "CheckpointError", "DataError", "InputError", "Predictor"]
