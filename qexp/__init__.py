"""qexp: quantization experiments on Qwen3, tracked in MLflow."""
import logging

# Import-time noise that says nothing about a run: torchao's optional CUDA extensions that fail to load on
# machines without them, and torch's deprecation note on torchao's enum registration.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"
