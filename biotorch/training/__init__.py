"""The trainer: recipes, the training loop, checkpoints, records and evaluation.

Files: ``recipe.py`` (YAML → validated Recipe), ``trainer.py`` (one run; several runs together),
``optim.py`` (optimizer and schedule), ``checkpoint.py`` (resumable, atomic, safetensors + JSON),
``records.py`` (history, plots),
``evaluate.py`` (top-1/top-5, ``biotorch eval``), ``datasets.py`` (splits on the device, ``synthetic``).

Example::

    >>> from biotorch.training import Trainer, load_recipe
    >>> Trainer(load_recipe("recipes/fashion_mnist/lenet.yaml", {"rule": "fa"}), "runs/lenet_fa").fit()
"""
from .evaluate import evaluate
from .recipe import Recipe, load_recipe, make_recipe, save_recipe
from .trainer import Trainer, train_together

__all__ = ["Recipe", "Trainer", "evaluate", "load_recipe", "make_recipe", "save_recipe", "train_together"]
