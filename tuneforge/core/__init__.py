"""The machinery of one run: ``data`` (files to checked, encoded batches), ``methods`` (how a model is made
trainable, behind a registry), ``tasks`` (what differs between task types, behind the Task interface),
``evaluate`` (metrics, eval folders, generation scores), ``recipe`` (recipes read with every method's keys) and
``engine`` (the one training loop every task trains through, with checkpoints, resume, DDP and tracking).
Inside core, too, imports point only down: engine → tasks → evaluate, recipe → data, methods → anatomy.
"""
