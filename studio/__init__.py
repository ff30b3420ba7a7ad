"""SDXL-family studio core: model registry and loading, generation, layer removal, arena. Never imports gradio."""
import os

# transformers warns on import that torchvision is absent; the studio never needs it.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
