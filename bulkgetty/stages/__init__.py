"""The run's stages: manifest -> decide -> acquire -> transfer -> journal -> report, and the
engine that joins them."""
