"""Physics Informed Distillation (PID) of EDM diffusion teachers into one-step students."""

__version__ = "0.1.0"
