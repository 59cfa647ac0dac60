"""The towers of the dual encoder: 2D image trunks (MONAI, with a projection head), the transformers text
tower, and the CT/MR volume encoders (3D, 2.5D and slice-by-slice with attention pooling)."""

from medcm.model.encoders.image import ImageEncoder
from medcm.model.encoders.text import TextEncoder
from medcm.model.encoders.volume import build_volume_encoder

__all__ = ["ImageEncoder", "TextEncoder", "build_volume_encoder"]
