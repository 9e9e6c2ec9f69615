"""biotorch: learning rules beyond backprop as drop-in layers, a model registry and pretrained weights."""
__version__ = "0.1.0"
