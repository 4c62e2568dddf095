"""The continuous forms of the decoders (``biglm.serve.rows.Stepper``), one module per kind of decoder; the
scheduler's ``STEPPERS`` table lists them."""
