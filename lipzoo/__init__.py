"""lipzoo: a model zoo of certifiably robust 1-Lipschitz image classifiers."""

from ._version import __version__
from . import data
from .certify import DEFAULT_EPS, CertificationResult, certify
from .layers import LAYERS, InputError, get_layer, list_layers
from .models import ConvNet, ConvNetConfig
from .registry import UnknownModelError, data_config, get_architecture, list_models, model_info
from . import hub
from .hub import ChecksumError, save_pretrained
from .factory import create_model
from .zoo.convert import convert_1llc_state_dict, load_1llc_model
from .audit import audit
from .export import to_plain

__all__ = [
    "DEFAULT_EPS",
    "CertificationResult",
    "certify",
    "data",
    "LAYERS",
    "ConvNet",
    "ConvNetConfig",
    "InputError",
    "UnknownModelError",
    "create_model",
    "data_config",
    "get_architecture",
    "get_layer",
    "list_layers",
    "list_models",
    "model_info",
    "hub",
    "ChecksumError",
    "save_pretrained",
    "convert_1llc_state_dict",
    "load_1llc_model",
    "audit",
    "to_plain",
    "__version__",
]
