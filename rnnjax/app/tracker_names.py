"""The names of the experiment trackers (`logger=NAME`), where the config schema and the trackers
both read them: the schema needs no tracker code (rnnjax.app.trackers imports results)."""

TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "csv")
