"""Fast neural style transfer (Johnson et al. 2016) with a small, CPU-trained network.

>>> from apps.style_transfer import StyleOptions, stylize_file
>>> stylize_file("photo.jpg", "out.png", StyleOptions(size=256))
"""

from apps.style_transfer.model import TransformerNet, load_transformer
from apps.style_transfer.stylize import StyleOptions, stylize, stylize_file

__all__ = ["TransformerNet", "load_transformer", "StyleOptions", "stylize", "stylize_file"]
