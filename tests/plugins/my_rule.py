"""A learning rule defined outside biotorch, as a researcher would write one: the kit, training, checkpoints, the
CLI and timm must take it as they take the built-in eight (``tests/test_rule_api.py``)."""
import torch

import biotorch
from biotorch.rules import counter_uniform, init_bound


@biotorch.register_rule
class SignFA(biotorch.Rule):
    """Random-sign feedback: a fixed B = s·sign(R), R drawn from the layer's seed, s the std of W's init."""

    name = "signfa"
    options = ("scale",)
    derived = ("feedback_weight",)  # a function of the seed: re-derived on load, not saved

    def __init__(self, scale: float = 1.0):
        self.scale = float(scale)

    def draw(self, layer) -> torch.Tensor:
        signs = counter_uniform(layer.weight.shape, layer.feedback_seed * 7 + 1, layer.weight.device).sign()
        return (signs * self.scale * init_bound(layer.weight) / 3 ** 0.5).to(layer.weight.dtype)

    def setup(self, layer, seed):
        layer.register_buffer("feedback_seed", torch.tensor(seed, device=layer.weight.device))
        layer.register_buffer("feedback_weight", self.draw(layer), persistent=False)

    def after_load(self, layer):
        with torch.no_grad():
            layer.feedback_weight.copy_(self.draw(layer))

    def signal(self, layer, input):
        return layer.feedback_weight, None
