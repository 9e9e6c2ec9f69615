"""Adversarial robustness of a checkpoint: FGSM and PGD-10 in pixel space with three gradient sources, Square with
none, and the worst case per image.

The attacks come from the Adversarial Robustness Toolbox (``art``); they run in pixel space ([0, 1], ``eps``
in pixel units, L∞) on the model with the checkpoint's normalisation inside it, in eval mode, from a fixed
seed. What differs is whose gradient crafts the examples:

* ``exact``: the target's true input gradient (white box, inside :func:`biotorch.exact_gradients`);
* ``rule``: the gradient the target's own learning rule sends to the input (the model as it trains). For fa,
  usf, frsf, brsf, wm and kp it is backprop with each layer's feedback B in place of W. For dfa it is the
  first layer's direct signal e·B₁: the output error e projected to image shape by a fixed random B₁. It
  depends on the image only through e, never on the weights: a class-dependent random pattern;
* ``transfer``: examples crafted on the bp checkpoint of the same architecture and data
  (``{arch}_bp.{tag}``) with its exact gradient, then shown to the target, whose gradient is never used.

For a bp target the three are the same attack. Square (``--attack square``, ART's ``SquareAttack``, up to 5,000
queries an image as in AutoAttack) uses no gradient at all, only the model's outputs: one source, ``queries``,
that no gradient can mask. The ``worst`` row of each eps counts an image as robust only if no attack and no
gradient source fooled it; each row keeps which images it fooled (``fooled``, a base64 bitmask), so an attack run
later joins the worst case without re-running the others.

``metrics.json`` of a card holds the results under ``"robustness"``: a list of ``{attack, eps, gradient, top1,
images, seed, split, fooled}`` (Square's rows add ``queries`` and ``precision``, the worst rows ``over``). FGSM and
PGD rows add ``vanished``: the images whose gradient from that source is all zero or not finite (gradient masking:
the attack cannot move them, so that top-1 is an upper bound; the command warns and the card says so). Square and
worst rows have no gradient source, so no ``vanished``.

Example::

    >>> from biotorch import robustness
    >>> model = biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True)
    >>> bp = biotorch.create_model("lenet_bp.fashion_mnist", pretrained=True)
    >>> images, labels, split = robustness.load_images("fashion_mnist", limit=1000)   # floats in [0, 1]
    >>> block = robustness.evaluate_robustness(model, images, labels, transfer_model=bp, split=split)
    >>> len(block), sorted(block[0])                 # 2 attacks × 4 eps × 3 gradient sources, 4 worst cases
    (28, ['attack', 'eps', 'fooled', 'gradient', 'images', 'seed', 'split', 'top1', 'vanished'])
    >>> robustness.write_block("model_cards/lenet_fa.fashion_mnist", block)

    $ biotorch robustness lenet_fa.fashion_mnist --attack pgd --eps 0.05 --limit 1000 --json
    $ biotorch robustness resnet20_dfa.cifar10_jpeg --attack fgsm,pgd,square --eps 8/255,0.05 --limit 1000

Files: ``attacks.py`` (the attacks and the block they give), ``report.py`` (the block in a card: ``metrics.json``,
model index, plot, the card's section), ``cli.py`` (the images, the checkpoints, ``biotorch robustness``).
"""

from .attacks import (ATTACKS, DEFAULT_ATTACKS, DEFAULT_EPS, GRADIENT_ATTACKS, GRADIENTS, HEADLINE_EPS, SQUARE_EPS,
                      SQUARE_QUERIES, Pixels, accuracy, check_attacks, check_eps, check_gradients, check_queries, craft,
                      evaluate_robustness, fastest_precision, normalisation, predict, unpack_bits, vanished,
                      with_worst, without_outcomes)
from .cli import add_commands, load_images, run_robustness
from .report import (card_section, carried_over, info_lines, merge_blocks, model_index, plot, vanished_lines,
                     write_block)

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "DEFAULT_EPS", "GRADIENT_ATTACKS", "GRADIENTS", "HEADLINE_EPS", "SQUARE_EPS",
           "SQUARE_QUERIES", "Pixels", "accuracy", "add_commands", "card_section", "carried_over", "check_attacks",
           "check_eps", "check_gradients", "check_queries", "craft", "evaluate_robustness", "fastest_precision",
           "info_lines", "load_images", "merge_blocks", "model_index", "normalisation", "plot", "predict",
           "run_robustness", "unpack_bits", "vanished", "vanished_lines", "with_worst", "without_outcomes",
           "write_block"]
