"""Rules that break one contract each: the kit must name it (``tests/test_rule_api.py``)."""
import torch

import biotorch
from biotorch.rules import FA


class Moves(FA):
    """after_step replaces its feedback instead of updating it in place."""
    name = "moves"
    stateful = True

    def after_step(self, layer):
        layer.feedback_weight = layer.feedback_weight * 1.0


class Forgets(FA):
    """Its feedback comes from the seed but is neither saved nor re-derived on load."""
    name = "forgets"
    derived = ()

    def setup(self, layer, seed):
        super().setup(layer, seed)
        layer.register_buffer("feedback_weight", self.draw(layer) * 2, persistent=False)

    def after_load(self, layer):
        pass


class Global(FA):
    """Draws its feedback from torch's global RNG: each DDP rank would hold another B."""
    name = "global"
    derived = ()

    def setup(self, layer, seed):
        layer.register_buffer("feedback_seed", torch.tensor(seed))
        layer.register_buffer("feedback_weight", torch.randn_like(layer.weight) * 0.1)


class Fresh(FA):
    """Its signal is a new draw at every call, not a function of the layer's state: what a backward used cannot be
    known, saved or reproduced."""
    name = "fresh"
    calls = 0

    def signal(self, layer, input):
        Fresh.calls += 1
        return layer.feedback_weight * (1 + Fresh.calls % 7), None
