"""The names `logging.trackers` accepts: the config checks them without importing the trackers (train.trackers)."""

TRACKERS = ("tensorboard", "wandb", "mlflow")
