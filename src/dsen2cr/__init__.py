"""dsen2cr: cloud removal for Sentinel-2 with Sentinel-1 SAR fusion (DSen2-CR, Meraner et al. 2020).

The model, preprocessing, masks, losses and metrics import without the training stack (Lightning).
"""

from dsen2cr.model import MODEL_VARIANTS, DSen2CR, create_model

__version__ = "0.1.0"

__all__ = ["MODEL_VARIANTS", "DSen2CR", "__version__", "create_model"]
