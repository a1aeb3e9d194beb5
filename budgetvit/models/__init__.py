"""ViT models: pure nn.Modules, with no I/O, device or compile logic."""
from .counts import count_params, forward_flops, train_flops
from .interop import from_timm_state_dict, to_timm_state_dict
from .param_groups import param_groups
from .registry import create_model, model_config, model_names
from .vit import ViTConfig, VisionTransformer

__all__ = ["ViTConfig", "VisionTransformer", "count_params", "create_model", "forward_flops",
           "from_timm_state_dict", "to_timm_state_dict",
           "model_config", "model_names", "param_groups", "train_flops"]
