"""The continuous forms of the decoders (``biglm.serve.scheduler.Stepper``), one module per kind of decoder."""
