"""The error every inference step raises for a run directory or an input it cannot use."""


class InferenceError(ValueError):
  """A run directory or a new input that cannot be used for inference."""
