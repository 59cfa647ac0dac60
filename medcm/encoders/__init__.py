"""Image and text towers of the dual encoder."""
