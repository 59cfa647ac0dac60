"""medcm: a medical image–report assistant (similar cases and draft findings for DICOM studies)."""

__version__ = "0.1.0"
