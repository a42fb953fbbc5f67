"""hrdv2: training-free high-resolution ViT features and the tools that use them.

Layers (each imports only those below it):
    cli/, app/                          user interfaces
    segmentation/, unsupervised/, probe/  workflows
    features/, datasets/, metrics/, crf   building blocks
    upsample/                           HR-Dv2 featurizer and baseline upsamplers
    backbones/, transforms/             frozen ViTs, invertible image transforms
    io, errors                          files and user-facing errors
"""

__version__ = "0.1.0"
