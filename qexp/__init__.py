"""qexp: quantization experiments on Qwen3, tracked in MLflow."""
import logging

# Import-time noise that says nothing about a run: torchao's optional CUDA extensions that fail to load on
# machines without them, and torch's deprecation note on torchao's enum registration.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# MLflow's store set-up chatter (creating tables, migrations, new experiment) on every fresh mlflow.db.
for _name in ("mlflow.store.db.utils", "alembic", "mlflow.tracking.fluent"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__version__ = "0.1.0"
